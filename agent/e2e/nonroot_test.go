package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"
	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// synced waits for a sync of source recorded after since and returns the
// source.
func (w *world) synced(source string, since time.Time) *ferryv1.Source {
	w.t.Helper()
	var s *ferryv1.Source
	testkit.WaitFor(w.t, 90*time.Second, "a sync of "+source, func() bool {
		var err error
		s, err = w.f.client.Sources().GetSource(ctx(w.t, 10*time.Second), &ferryv1.GetSourceRequest{Name: source})
		return err == nil && s.GetLastSyncAttemptTime() != nil && s.GetLastSyncAttemptTime().AsTime().After(since)
	})
	return s
}

// capability is the source's capability of kind.
func capability(s *ferryv1.Source, kind ferryv1.SourceCapabilityKind) *ferryv1.SourceCapability {
	for _, c := range s.GetCapabilities() {
		if c.GetKind() == kind {
			return c
		}
	}
	return nil
}

// TestNonRootSource registers a KVM source whose SSH user is a real local
// user, not root, in group libvirt and able to read the images: the
// registration's sync says it may list VMs and copy by the snapshot
// method but not live (the backup API needs root), naming what it lacks;
// a running VM is migrated through it by the snapshot method, its
// overlays in the user's ~/.ferry, the source back on its original
// images. An image the user cannot read is named at the next sync, with
// its VM.
func TestNonRootSource(t *testing.T) {
	t.Parallel() // see doc.go
	w := newWorld(t)
	w.lv.RequireUserAccess(t, testenv.TestUser)
	src := testenv.NewTestVM(t, w.lv, testenv.VMOptions{Backing: true, RawData: true, RandomBytes: 8 << 20})
	since := time.Now()
	cr, err := w.f.client.Sources().CreateCredential(ctx(t, 10*time.Second), &ferryv1.CreateCredentialRequest{Credential: &ferryv1.Credential{
		Type: ferryv1.CredentialType_CREDENTIAL_TYPE_PASSWORD, Secret: testenv.TestPassword}})
	must(t, err)
	source := w.createSource(cr.GetName(), testenv.TestUser, w.sshd.HostKey)
	s := w.synced(source, since)
	if s.GetLastSyncError() != "" {
		t.Fatalf("the registration's sync failed: %s", s.GetLastSyncError())
	}
	t.Logf("capabilities at registration: %v", s.GetCapabilities())
	list := capability(s, ferryv1.SourceCapabilityKind_SOURCE_CAPABILITY_KIND_LIST_VMS)
	live := capability(s, ferryv1.SourceCapabilityKind_SOURCE_CAPABILITY_KIND_LIVE_COPY)
	old := capability(s, ferryv1.SourceCapabilityKind_SOURCE_CAPABILITY_KIND_OLD_HOST_COPY)
	if !list.GetAvailable() || list.GetVia() != "libvirt through the SSH user (group libvirt or SASL)" {
		t.Errorf("list VMs: %v", list)
	}
	if live.GetAvailable() || !strings.HasPrefix(live.GetMissing(), "a root login (user "+testenv.TestUser+" is uid ") {
		t.Errorf("live copy: %v, want unavailable for want of a root login", live)
	}
	// Other tests' VMs on this libvirtd may have images the user cannot
	// read; this test's VM must not be among them.
	if strings.Contains(old.GetMissing(), src.Name) {
		t.Errorf("old-host copy: %v, want this VM's images readable", old)
	}
	if old.GetAvailable() && old.GetVia() != "group libvirt and read access to the images" {
		t.Errorf("old-host copy: %v", old)
	}
	out, err := w.f.ferryctl("source", "get", source)
	if err != nil || !strings.Contains(out, "Live copy") || !strings.Contains(out, "no: missing a root login") {
		t.Errorf("ferryctl source get: %v:\n%s", err, out)
	}

	t.Run("migrated by the snapshot method", func(t *testing.T) {
		refs := snapshotRefs(t, src)
		// The spec first: its source refresh must not spend the create's 10 s
		// (it did, at load 20: the arguments are evaluated after ctx).
		spec := w.spec(w.sourceVM(source, src.Name), nil)
		w.nonRootJob(t, source, spec, src, refs, testenv.TestUser)
		if got := w.f.agents[w.host].lines("/home/" + testenv.TestUser + "/.ferry/ferry-backup-" + src.UUID); len(got) == 0 {
			t.Error("the agent never named an overlay or socket in the user's ~/.ferry")
		}
		expectOnOriginals(t, w, src)
		left, _ := filepath.Glob(filepath.Join("/home", testenv.TestUser, ".ferry", "ferry-backup-"+src.UUID+"*"))
		if len(left) != 0 {
			t.Errorf("left in ~%s/.ferry: %v", testenv.TestUser, left)
		}
	})

	t.Run("unreadable image named", func(t *testing.T) {
		data := src.Disks[1].Path
		if err := os.Chmod(data, 0o600); err != nil {
			t.Fatal(err)
		}
		since := time.Now()
		_, err := w.f.client.Sources().SyncSource(ctx(t, time.Minute), &ferryv1.SyncSourceRequest{Name: source})
		must(t, err)
		s := w.synced(source, since)
		old := capability(s, ferryv1.SourceCapabilityKind_SOURCE_CAPABILITY_KIND_OLD_HOST_COPY)
		t.Logf("old-host copy after the chmod: %v", old)
		want := "VM " + src.Name + ": " + data
		if old.GetAvailable() || !strings.Contains(old.GetMissing(), "read access for user "+testenv.TestUser+" to the images of ") ||
			!strings.Contains(old.GetMissing(), want) || strings.Contains(old.GetMissing(), src.Disks[0].Path) ||
			!strings.Contains(old.GetMissing(), "(or sudo without a password for /usr/bin/qemu-nbd --read-only, as docs/sudoers.ferry allows)") {
			t.Errorf("old-host copy: %v; want it missing read access to %q only", old, want)
		}
	})
}

// nonRootJob migrates src from source, whose SSH user is the non-root
// user: the job succeeds by the snapshot method, and its volumes are the
// disks as they were at the snapshot (refs). It returns the job's name.
func (w *world) nonRootJob(t *testing.T, source string, spec *ferryv1.MigrationJobSpec, src *testenv.TestVM, refs []string, user string) string {
	t.Helper()
	resp, err := w.f.client.Jobs().CreateMigrationJobs(ctx(t, 10*time.Second), &ferryv1.CreateMigrationJobsRequest{
		Source: source, MigrationServer: w.server, Jobs: []*ferryv1.MigrationJobSpec{spec}})
	must(t, err)
	name := resp.GetJobs()[0].GetName()
	j := w.waitJob(name, 3*time.Minute, "the job to end", terminal)
	if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
		t.Fatalf("job ended %s: %s", j.GetState(), j.GetReason())
	}
	for i, d := range src.Disks {
		compare(t, refs[i], w.volume(name, d.Target))
	}
	lines := w.f.agents[w.host].lines(`msg="copy method chosen"`)
	if len(lines) != 1 || !strings.Contains(lines[0], "snapshot because the SSH user "+user+" is not root") {
		t.Errorf("copy method lines %q, want the snapshot method for a non-root user", lines)
	}
	return name
}
