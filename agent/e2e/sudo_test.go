package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"
)

const sudoPassword = "ferry-sudo-password"

// TestSudoSource registers a KVM source whose SSH user is a local user of
// its own with the README's sudoers snippet (docs/sudoers.ferry, installed
// as it is with the user's name put in), outside group libvirt and unable
// to read the images: the registration's sync says it lists VMs and copies
// by the snapshot method through sudo; a running VM with two disks (a qcow2
// on a backing file, a raw one) is migrated, its disks identical, the
// source back on its original images with no overlay, no qemu-nbd and
// nothing in ~/.ferry left. A user without the snippet is told at
// registration exactly what it lacks.
func TestSudoSource(t *testing.T) {
	t.Parallel() // see doc.go
	w := newWorld(t)
	src := testenv.NewTestVM(t, w.lv, testenv.VMOptions{Backing: true, RawData: true, RandomBytes: 8 << 20})
	for _, d := range src.Disks {
		for _, f := range []string{d.Path, d.Backing} {
			if f != "" {
				must(t, os.Chmod(f, 0o600))
			}
		}
	}
	cr, err := w.f.client.Sources().CreateCredential(ctx(t, 10*time.Second), &ferryv1.CreateCredentialRequest{Credential: &ferryv1.Credential{
		Type: ferryv1.CredentialType_CREDENTIAL_TYPE_PASSWORD, Secret: sudoPassword}})
	must(t, err)

	t.Run("with the snippet", func(t *testing.T) {
		user := testenv.SudoUser(t, "ferrysudo", sudoPassword, testenv.RepoFile(t, "docs/sudoers.ferry"))
		since := time.Now()
		source := w.createSource(cr.GetName(), user, w.sshd.HostKey)
		s := w.synced(source, since)
		if s.GetLastSyncError() != "" {
			t.Fatalf("the registration's sync failed: %s", s.GetLastSyncError())
		}
		t.Logf("capabilities at registration: %v", s.GetCapabilities())
		viaLibvirt := "sudo for libvirt's /usr/bin/virt-ssh-helper (docs/sudoers.ferry)"
		list := capability(s, ferryv1.SourceCapabilityKind_SOURCE_CAPABILITY_KIND_LIST_VMS)
		live := capability(s, ferryv1.SourceCapabilityKind_SOURCE_CAPABILITY_KIND_LIVE_COPY)
		old := capability(s, ferryv1.SourceCapabilityKind_SOURCE_CAPABILITY_KIND_OLD_HOST_COPY)
		if !list.GetAvailable() || list.GetVia() != viaLibvirt {
			t.Errorf("list VMs: %v, want available via %q", list, viaLibvirt)
		}
		if live.GetAvailable() || !strings.HasPrefix(live.GetMissing(), "a root login (user "+user+" is uid ") {
			t.Errorf("live copy: %v, want unavailable for want of a root login", live)
		}
		if want := viaLibvirt + ", and sudo for /usr/bin/qemu-nbd --read-only (docs/sudoers.ferry)"; !old.GetAvailable() || old.GetVia() != want {
			t.Errorf("old-host copy: %v, want available via %q", old, want)
		}

		refs := snapshotRefs(t, src)
		// The spec first: its source refresh must not spend the create's
		// 10 s (the arguments are evaluated after ctx).
		spec := w.spec(w.sourceVM(source, src.Name), nil)
		p, err := w.f.client.Jobs().PreviewMigrationJobs(ctx(t, time.Minute), &ferryv1.PreviewMigrationJobsRequest{
			Source: source, MigrationServer: w.server, Jobs: []*ferryv1.MigrationJobSpec{spec}})
		must(t, err)
		method := ": snapshot because the SSH user " + user + " is not root"
		if notes := strings.Join(p.GetNotes(), "\n"); len(p.GetFailedChecks()) != 0 || !strings.Contains(notes, method) {
			t.Errorf("preview failed checks %q, notes %q; want none and the snapshot method's note (%q)", p.GetFailedChecks(), p.GetNotes(), method)
		}
		w.nonRootJob(t, source, spec, src, refs, user)
		taken := w.f.agents[w.host].lines(`msg="snapshot taken; reading the original images"`)
		if len(taken) != 1 || !strings.Contains(taken[0], `reader="qemu-nbd through sudo"`) ||
			!strings.Contains(taken[0], "/home/"+user+"/.ferry/nbd/ferry-backup-"+src.UUID) {
			t.Errorf("snapshot lines %q, want one reading through sudo's qemu-nbd on sockets in ~/.ferry/nbd", taken)
		}
		expectOnOriginals(t, w, src)
		if out, err := exec.Command("pgrep", "-af", "qemu-nbd .*ferry-backup-"+src.UUID).CombinedOutput(); err == nil {
			t.Errorf("qemu-nbd still runs for the VM:\n%s", out)
		}
		left, _ := filepath.Glob(filepath.Join("/home", user, ".ferry", "*", "ferry-backup-*"))
		top, _ := filepath.Glob(filepath.Join("/home", user, ".ferry", "ferry-backup-*"))
		if left = append(left, top...); len(left) != 0 {
			t.Errorf("left in ~%s/.ferry: %v", user, left)
		}
	})

	t.Run("without the snippet", func(t *testing.T) {
		user := testenv.SudoUser(t, "ferrynosudo", sudoPassword, "")
		since := time.Now()
		source := w.createSource(cr.GetName(), user, w.sshd.HostKey)
		s := w.synced(source, since)
		want := "(list VMs: user " + user + " is not root nor in group libvirt, and it may not run " +
			"`sudo -n /usr/bin/virt-ssh-helper qemu:///system` without a password: make it a member of group libvirt, " +
			"give the source a SASL user, or install the sudoers snippet docs/sudoers.ferry for it)"
		if !strings.HasSuffix(s.GetLastSyncError(), want) {
			t.Errorf("the registration's sync error is %q\nwant it to end with %q", s.GetLastSyncError(), want)
		}
	})
}
