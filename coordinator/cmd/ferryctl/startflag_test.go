package main

import (
	"context"
	"strings"
	"testing"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// TestStartFlags: --start and --no-start set auto_start, neither leaves it
// unset (the target keeps the source's state), both together are refused.
func TestStartFlags(t *testing.T) {
	for _, tt := range []struct {
		start, noStart bool
		want           string
	}{{false, false, "unset"}, {true, false, "true"}, {false, true, "false"}} {
		jf := newJobFlags()
		jf.source, jf.server, jf.vm, jf.cluster, jf.store = "kvm-src", "kvm-1", "web-1", "prod", "local-1"
		jf.start, jf.noStart = tt.start, tt.noStart
		req, err := jf.request()
		if err != nil {
			t.Fatal(err)
		}
		got := "unset"
		if o := req.GetJobs()[0].GetOptions(); o.AutoStart != nil {
			got = map[bool]string{true: "true", false: "false"}[o.GetAutoStart()]
		}
		if got != tt.want {
			t.Errorf("--start=%v --no-start=%v: auto_start %s, want %s", tt.start, tt.noStart, got, tt.want)
		}
	}
	var out, errOut strings.Builder
	code := Execute(context.Background(), []string{"job", "create", "--source", "s", "--migration-server", "m", "--vm", "v",
		"--cluster", "c", "--storage", "p", "--network", "n", "--start", "--no-start"}, IO{Out: &out, Err: &errOut})
	if code != exitUsage || !strings.Contains(errOut.String(), "ferryctl: --start and --no-start contradict each other; give one") {
		t.Errorf("--start --no-start: exit %d, stderr %q", code, errOut.String())
	}
}

// TestPreviewPrintsNotes: the preview's notes are printed under Notes.
func TestPreviewPrintsNotes(t *testing.T) {
	var out strings.Builder
	a := &app{io: IO{Out: &out}, output: "table"}
	note := "jobs[0].options.auto_start: false: source VM web-1 is paused, so its target web-1 is defined but not started; set auto_start true (ferryctl --start) to start it"
	if err := a.printPreview(&ferryv1.PreviewMigrationJobsResponse{Notes: []string{note}, Fits: true}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "\nNotes:\n  "+note+"\n") {
		t.Errorf("preview output lacks the note:\n%s", out.String())
	}
}

// TestPreviewPrintsCopyMethods: a KVM preview's copy method notes and a
// failed check naming a refused source are printed as the coordinator
// words them, each on its own line under its heading.
func TestPreviewPrintsCopyMethods(t *testing.T) {
	var out strings.Builder
	a := &app{io: IO{Out: &out}, output: "table"}
	note := "jobs[0] (VM web-1): source sources/kvm: libvirt 9.0.0, QEMU 7.2.0: backup API because the VM is running " +
		"and libvirt 6.0.0 with QEMU 4.2.0 or newer have the backup API"
	failed := "jobs[1] (VM db-1): source sources/kvm: libvirt 1.2.8, QEMU 1.1.0: refused because a migration needs libvirt 1.2.9 or newer; " +
		"upgrade the source host first"
	if err := a.printPreview(&ferryv1.PreviewMigrationJobsResponse{Jobs: []*ferryv1.MigrationJob{{SourceVm: "web-1"}, {SourceVm: "db-1"}},
		Notes: []string{note}, FailedChecks: []string{failed}}); err != nil {
		t.Fatal(err)
	}
	want := "\nNotes:\n  " + note + "\n\nFailed pre-checks:\n  " + failed + "\n\n2 job(s): the batch does NOT fit\n"
	if !strings.HasSuffix(out.String(), want) {
		t.Errorf("preview output:\n%s\nwant it to end with:\n%s", out.String(), want)
	}
}

// TestVerifyBootFlag: --verify-boot sets options.verify_boot, and job get
// shows how a succeeded job's target booted.
func TestVerifyBootFlag(t *testing.T) {
	jf := newJobFlags()
	jf.source, jf.server, jf.vm, jf.cluster, jf.store = "kvm-src", "kvm-1", "web-1", "prod", "local-1"
	jf.verifyBoot = true
	req, err := jf.request()
	if err != nil {
		t.Fatal(err)
	}
	if !req.GetJobs()[0].GetOptions().GetVerifyBoot() {
		t.Errorf("--verify-boot: options %v", req.GetJobs()[0].GetOptions())
	}
	j := &ferryv1.MigrationJob{State: ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED,
		Options: &ferryv1.MigrationOptions{VerifyBoot: true}, BootVerified: true, BootVerifiedBy: "serial console: FERRY BOOTED FROM vdb"}
	var got string
	for _, f := range jobDetails(j) {
		if f.label == "Boot verified" {
			got = f.value
		}
	}
	if want := "yes: serial console: FERRY BOOTED FROM vdb"; got != want {
		t.Errorf("job get Boot verified %q, want %q", got, want)
	}
}
