package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"
	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// TestColdMigration moves a shut-off VM, listed with its state, whose root
// disk is a qcow2 overlay on a backing file: the target volumes equal the
// source disks read through their backing chains, and the source stays
// shut off with its image files unchanged and no qemu-nbd or socket left.
// A VM started while its disks are copied fails its job with that reason;
// a cancelled cold copy leaves nothing behind either.
func TestColdMigration(t *testing.T) {
	t.Parallel() // see doc.go
	w := newWorld(t)
	t.Run("shut off", func(t *testing.T) {
		src := testenv.NewTestVM(t, w.lv, testenv.VMOptions{Stopped: true, Backing: true, RandomBytes: 8 << 20})
		vm := w.sourceVM(w.source, src.Name)
		if vm.GetState() != ferryv1.SourceVmState_SOURCE_VM_STATE_SHUT_OFF || len(vm.GetDisks()) != 2 {
			t.Fatalf("ListSourceVMs described %s as %v, want shut off with 2 disks", src.Name, vm)
		}
		// ferryctl finds it by its state, and the preview lets it through,
		// its target defined but not started.
		out, err := w.f.ferryctl("source", "vms", w.source, "--state", "shut-off")
		if err != nil || !strings.Contains(out, src.Name) {
			t.Errorf("ferryctl source vms --state shut-off: %v: %s; want %s listed", err, out, src.Name)
		}
		before := imageSums(t, src)
		spec := w.spec(vm, nil)
		p, err := w.f.client.Jobs().PreviewMigrationJobs(ctx(t, time.Minute), &ferryv1.PreviewMigrationJobsRequest{
			Source: w.source, MigrationServer: w.server, Jobs: []*ferryv1.MigrationJobSpec{spec}})
		must(t, err)
		if len(p.GetFailedChecks()) != 0 || len(p.GetNotes()) != 2 || !strings.Contains(p.GetNotes()[0], "source VM "+src.Name+" is shut off") ||
			!strings.Contains(p.GetNotes()[1], ": cold image read because the VM is shut off") {
			t.Errorf("preview failed checks %q, notes %q; want none, the note that the target is not started and the cold copy's note",
				p.GetFailedChecks(), p.GetNotes())
		}
		name := w.createJob(spec)
		job := w.waitJob(name, 3*time.Minute, "the job to end", terminal)
		if job.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
			t.Fatalf("job ended %s: %s", job.GetState(), job.GetReason())
		}
		for _, d := range src.Disks {
			compare(t, d.Path, w.volume(name, d.Target))
		}
		if got := w.f.agents[w.host].lines(`msg="cold export started"`); len(got) != 1 {
			t.Errorf("the agent logged %d cold exports, want 1: %v", len(got), got)
		}
		for _, d := range job.GetDisks() {
			if d.GetTotalBytes() == 0 || d.GetDoneBytes() != d.GetTotalBytes() || !d.GetVerified() {
				t.Errorf("disk %s progress %d/%d, verified %v", d.GetSourceDisk(), d.GetDoneBytes(), d.GetTotalBytes(), d.GetVerified())
			}
		}
		if st := src.State(t); st != "shut off" {
			t.Errorf("source VM is %s after the migration, want shut off", st)
		}
		if after := imageSums(t, src); after != before {
			t.Errorf("source images changed:\nbefore %s\nafter  %s", before, after)
		}
		if st := strings.TrimSpace(w.lv.Virsh(t, "domstate", spec.GetTarget().GetVmName())); st != "shut off" {
			t.Errorf("target VM is %s, want shut off (as the source)", st)
		}
		expectColdClean(t, src)
	})
	t.Run("started mid-copy", func(t *testing.T) {
		src := testenv.NewTestVM(t, w.lv, testenv.VMOptions{Stopped: true, Backing: true, RandomBytes: 64 << 20})
		// At 8 MiB/s the 64 MiB of random data take 8 s at least: the VM
		// is started well before the copy could end.
		w.setBandwidth(proto.String(""), proto.String(eightMiBps))
		spec := w.spec(w.sourceVM(w.source, src.Name), nil)
		name := w.createJob(spec)
		j := w.waitJob(name, 2*time.Minute, "the cold copy to begin", func(j *ferryv1.MigrationJob) bool {
			return terminal(j) || j.GetPhase() == converting && disk(j, "vda").GetDoneBytes() > 0
		})
		if terminal(j) {
			t.Fatalf("job ended %s before the VM could be started: %s", j.GetState(), j.GetReason())
		}
		src.Start(t)
		j = w.waitJob(name, 2*time.Minute, "the job to end", terminal)
		if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED ||
			!strings.Contains(j.GetReason(), "source VM was started during the cold copy") {
			t.Fatalf("job ended %s: %q, want FAILED because the VM was started", j.GetState(), j.GetReason())
		}
		if d := disk(j, "vda"); d.GetDoneBytes() >= d.GetTotalBytes() {
			t.Errorf("vda copied %d of %d bytes; the start was meant to come mid-copy", d.GetDoneBytes(), d.GetTotalBytes())
		}
		if st := src.State(t); st != "running" {
			t.Errorf("source VM is %s, want running as the operator started it", st)
		}
		w.expectVolumesGone(name)
		expectColdClean(t, src)

		// The operator stops it again, its image changes while it is off
		// (where the first attempt had copied), and the job is restarted:
		// the cache holds the images as they were, so the copy starts
		// over, and the target is the images as they are now.
		w.lv.Virsh(t, "destroy", src.Name)
		out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 0x5e 0 8M", src.Disks[0].Path).CombinedOutput()
		if err != nil {
			t.Fatalf("qemu-io: %v: %s", err, out)
		}
		w.setBandwidth(proto.String(""), proto.String(""))
		_, err = w.f.client.Jobs().RestartMigrationJob(ctx(t, 10*time.Second), &ferryv1.RestartMigrationJobRequest{Name: name})
		must(t, err)
		j = w.waitJob(name, 3*time.Minute, "the restarted job to end", terminal)
		if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
			t.Fatalf("restarted job ended %s: %s", j.GetState(), j.GetReason())
		}
		for _, d := range src.Disks {
			compare(t, d.Path, w.volume(name, d.Target))
		}
		if got := w.f.agents[w.host].lines("another point in time of the VM than its images now"); len(got) != 1 {
			t.Errorf("the restart's cache lines: %q, want one saying it starts over", got)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		src := testenv.NewTestVM(t, w.lv, testenv.VMOptions{Stopped: true, Backing: true, RandomBytes: 64 << 20})
		before := imageSums(t, src)
		w.setBandwidth(proto.String(""), proto.String(eightMiBps))
		spec := w.spec(w.sourceVM(w.source, src.Name), nil)
		name := w.createJob(spec)
		j := w.waitJob(name, 2*time.Minute, "the cold copy to begin", func(j *ferryv1.MigrationJob) bool {
			return terminal(j) || j.GetPhase() == converting && disk(j, "vda").GetDoneBytes() > 0
		})
		if terminal(j) {
			t.Fatalf("job ended %s before it could be cancelled: %s", j.GetState(), j.GetReason())
		}
		_, err := w.f.client.Jobs().CancelMigrationJob(ctx(t, 10*time.Second), &ferryv1.CancelMigrationJobRequest{Name: name})
		must(t, err)
		if j := w.job(name); j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_CANCELLED {
			t.Fatalf("cancelled job is %s", j.GetState())
		}
		w.expectVolumesGone(name)
		expectColdClean(t, src)
		if st := src.State(t); st != "shut off" {
			t.Errorf("source VM is %s after the cancel, want shut off", st)
		}
		if after := imageSums(t, src); after != before {
			t.Errorf("source images changed:\nbefore %s\nafter  %s", before, after)
		}
	})
}

// imageSums is the SHA-256 of each of a test VM's image files.
func imageSums(t *testing.T, vm *testenv.TestVM) string {
	t.Helper()
	var files []string
	for _, d := range vm.Disks {
		files = append(files, d.Path)
		if d.Backing != "" {
			files = append(files, d.Backing)
		}
	}
	var b strings.Builder
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		_, err = io.Copy(h, fh)
		fh.Close()
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(filepath.Base(f) + "=" + hex.EncodeToString(h.Sum(nil))[:16] + " ")
	}
	return b.String()
}

// expectColdClean waits until no socket of a cold export of vm is left on
// the source and no qemu-nbd serves one.
func expectColdClean(t *testing.T, vm *testenv.TestVM) {
	t.Helper()
	testkit.WaitFor(t, 30*time.Second, "the cold export's sockets and qemu-nbd to go", func() bool {
		return len(leftovers(vm)) == 0 && len(coldServers(vm)) == 0
	})
}

// coldServers lists the processes serving a cold export of vm: qemu-nbd,
// and sudo or the shell that runs it.
func coldServers(vm *testenv.TestVM) []string {
	var out []string
	cmdlines, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, f := range cmdlines {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		cmd := strings.ReplaceAll(string(b), "\x00", " ")
		if strings.Contains(cmd, "qemu-nbd ") && strings.Contains(cmd, "ferry-backup-"+vm.UUID) {
			out = append(out, filepath.Dir(f)+": "+cmd)
		}
	}
	return out
}
