package e2e

import (
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"
)

// TestRotateSourcePassword: the KVM host's password changes, the
// operator rotates the credential with UpdateCredential (no source,
// mapping group or job made again), and the next job logs in with the new
// password and succeeds; the host's sshd refuses the old one.
func TestRotateSourcePassword(t *testing.T) {
	t.Parallel() // see doc.go
	w := newWorld(t)
	// A login of uid 0 of this test's own, with a password: changing it
	// disturbs neither root's password nor another test's user. (A KVM
	// source's user must be root today: issue 17.)
	const user = "ferryrot"
	oldPw, newPw := "old-"+randID()+randID(), "new-"+randID()+randID()
	testenv.RootAlias(t, user, oldPw)
	sshd := testenv.StartSSHD(t, testenv.SSHDOptions{PasswordLogin: true})
	vm := testenv.NewTestVM(t, w.lv, testenv.VMOptions{})
	srcs := w.f.client.Sources()

	cred, err := srcs.CreateCredential(ctx(t, 10*time.Second), &ferryv1.CreateCredentialRequest{Credential: &ferryv1.Credential{
		Type: ferryv1.CredentialType_CREDENTIAL_TYPE_PASSWORD, Secret: oldPw}})
	must(t, err)
	s, err := srcs.CreateSource(ctx(t, 10*time.Second), &ferryv1.CreateSourceRequest{Source: &ferryv1.Source{
		Type: ferryv1.Platform_PLATFORM_KVM, Kvm: &ferryv1.KvmConnection{
			Address: sshd.Host, SshPort: int32(sshd.Port), User: user, Credential: cred.GetName(), HostKey: sshd.HostKey}}})
	must(t, err)
	source := s.GetName()
	w.sourceVM(source, vm.Name) // the old password works

	// The host's password is changed: Ferry's credential is now stale.
	testenv.SetPassword(t, user, newPw)
	_, err = srcs.ListSourceVMs(ctx(t, 60*time.Second), &ferryv1.ListSourceVMsRequest{Source: source, Refresh: true})
	if err == nil || !strings.Contains(err.Error(), "authenticate") {
		t.Fatalf("listing with the old password after the host changed it: %v, want an authentication failure", err)
	}

	rotated, err := srcs.UpdateCredential(ctx(t, 10*time.Second), &ferryv1.UpdateCredentialRequest{
		Credential: &ferryv1.Credential{Name: cred.GetName(), Secret: newPw, Etag: cred.GetEtag()},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"secret"}}})
	must(t, err)
	if rotated.GetFingerprint() == cred.GetFingerprint() || rotated.GetSecret() != "" {
		t.Fatalf("rotated credential = %v", rotated)
	}
	// The rotation is in the audit trail, naming the field, never its value.
	trail, err := w.f.client.Audit().ListAuditEvents(ctx(t, 10*time.Second), &ferryv1.ListAuditEventsRequest{Resource: cred.GetName()})
	must(t, err)
	var rotations int
	for _, ev := range trail.GetAuditEvents() {
		if text := prototext.Format(ev); strings.Contains(text, oldPw) || strings.Contains(text, newPw) {
			t.Fatalf("an audit event holds a password: %s", text)
		}
		if strings.HasSuffix(ev.GetMethod(), "/UpdateCredential") && ev.GetResult() == "OK" && slices.Contains(ev.GetFields(), "credential.secret") {
			rotations++
		}
	}
	if rotations != 1 {
		t.Fatalf("%d audit events of the rotation naming credential.secret in %v; want 1", rotations, trail.GetAuditEvents())
	}

	spec := w.spec(w.sourceVM(source, vm.Name), nil)
	resp, err := w.f.client.Jobs().CreateMigrationJobs(ctx(t, 10*time.Second), &ferryv1.CreateMigrationJobsRequest{
		Source: source, MigrationServer: w.server, Jobs: []*ferryv1.MigrationJobSpec{spec}})
	must(t, err)
	name := resp.GetJobs()[0].GetName()
	job := w.waitJob(name, 3*time.Minute, "the job to end", terminal)
	if job.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
		t.Fatalf("job after the rotation ended %s: %s", job.GetState(), job.GetReason())
	}
	for _, d := range vm.Disks {
		compare(t, d.Path, w.volume(name, d.Target))
	}

	// The source host's own sshd: the old password is refused, the new
	// one accepted.
	login := func(pw string) error {
		c, err := ssh.Dial("tcp", sshd.Addr, &ssh.ClientConfig{User: user, Auth: []ssh.AuthMethod{ssh.Password(pw)},
			HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: 10 * time.Second})
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := login(oldPw); err == nil || !strings.Contains(err.Error(), "unable to authenticate") {
		t.Errorf("sshd with the old password: %v, want it refused", err)
	}
	if err := login(newPw); err != nil {
		t.Errorf("sshd with the new password: %v", err)
	}
	for _, l := range append(w.f.coord.lines(""), w.f.agents[w.host].lines("")...) {
		if strings.Contains(l, oldPw) || strings.Contains(l, newPw) {
			t.Fatalf("a password is in a log: %s", l)
		}
	}
}
