package e2e

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// TestPauseOption: with the option the source ends paused; without it the
// source kept running the whole time (checked by polling during the job).
func TestPauseOption(t *testing.T) {
	t.Parallel() // see doc.go
	w := newWorld(t)
	running := testenv.NewTestVM(t, w.lv, testenv.VMOptions{})
	paused := testenv.NewTestVM(t, w.lv, testenv.VMOptions{})

	name := w.createJob(w.spec(w.sourceVM(w.source, running.Name), nil))
	testkit.WaitFor(t, 3*time.Minute, "the unpaused job to end", func() bool {
		if st := running.State(t); st != "running" {
			t.Fatalf("source is %s during a migration without the pause option", st)
		}
		return terminal(w.job(name))
	})
	if j := w.job(name); j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
		t.Fatalf("job ended %s: %s", j.GetState(), j.GetReason())
	}

	name = w.createJob(w.spec(w.sourceVM(w.source, paused.Name), &ferryv1.MigrationOptions{PauseSourceVm: true}))
	j := w.waitJob(name, 3*time.Minute, "the pausing job to end", terminal)
	if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
		t.Fatalf("job ended %s: %s", j.GetState(), j.GetReason())
	}
	if st := paused.State(t); st != "paused" {
		t.Errorf("source is %s after a migration with the pause option, want paused", st)
	}
	for _, d := range paused.Disks {
		compare(t, d.Path, w.volume(name, d.Target))
	}
}

// TestSourceAuthentication: key and password logins both work, trust on
// first use records the host key, and a wrong pinned key is refused.
func TestSourceAuthentication(t *testing.T) {
	t.Parallel() // see doc.go
	w := newWorld(t)
	vm := testenv.NewTestVM(t, w.lv, testenv.VMOptions{})
	w.lv.RequireUserAccess(t, testenv.TestUser)

	pw, err := w.f.client.Sources().CreateCredential(ctx(t, 10*time.Second), &ferryv1.CreateCredentialRequest{Credential: &ferryv1.Credential{
		Type: ferryv1.CredentialType_CREDENTIAL_TYPE_PASSWORD, Secret: testenv.TestPassword}})
	must(t, err)
	byPassword := w.createSource(pw.GetName(), testenv.TestUser, "")
	w.sourceVM(byPassword, vm.Name) // listing works with a password
	w.sourceVM(w.source, vm.Name)   // and with a key

	src, err := w.f.client.Sources().GetSource(ctx(t, 10*time.Second), &ferryv1.GetSourceRequest{Name: byPassword})
	must(t, err)
	if got := src.GetKvm().GetObservedHostKey(); strings.TrimSpace(got) != strings.TrimSpace(w.sshd.HostKey) {
		t.Errorf("host key recorded on first use = %q, want %q", got, w.sshd.HostKey)
	}

	other := testenv.StartSSHD(t, testenv.SSHDOptions{}) // another host key
	wrong := w.createSource(w.cred, "root", other.HostKey)
	_, err = w.f.client.Sources().ListSourceVMs(ctx(t, 60*time.Second), &ferryv1.ListSourceVMsRequest{Source: wrong})
	if err == nil {
		t.Fatal("a source with the wrong pinned host key was listed")
	}
	msg := status.Convert(err).Message()
	if !strings.Contains(msg, "host key") || !strings.Contains(msg, w.sshd.HostKeyFingerprint) || !strings.Contains(msg, other.HostKeyFingerprint) {
		t.Errorf("wrong host key error does not say what happened: %v", err)
	}

	// A job against the wrong key fails with the same clear reason and
	// leaves nothing behind.
	bad := w.spec(w.sourceVM(w.source, vm.Name), nil)
	resp, err := w.f.client.Jobs().CreateMigrationJobs(ctx(t, 10*time.Second), &ferryv1.CreateMigrationJobsRequest{
		Source: wrong, MigrationServer: w.server, Jobs: []*ferryv1.MigrationJobSpec{bad}})
	must(t, err)
	j := w.waitJob(resp.GetJobs()[0].GetName(), time.Minute, "the job to fail", terminal)
	if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED || !strings.Contains(j.GetReason(), "host key") {
		t.Errorf("job against a wrong host key: %s %q", j.GetState(), j.GetReason())
	}
	if status.Code(err) != codes.OK {
		t.Fatal(err)
	}
}
