package e2e

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"
	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// TestWarmKVMPlacedOnAnotherHost: a warm job of a running VM whose target
// is placed on host b, with local storage (b's own directory), while host
// a is the migration server. Preview and create accept it. Rounds 2 and
// the cutover's carry the writes made between them onto b's volumes
// through b's exports; b's agent defines the target VM before the source
// stops and starts it after the last delta. Then every target disk on b
// is identical to the source as it stopped, the VM is defined (and runs)
// on b's libvirtd only, and nothing of the job is on a's storage. A second
// such job cancelled while SYNCING leaves no volume and no VM on b, and
// no checkpoint on the source.
func TestWarmKVMPlacedOnAnotherHost(t *testing.T) {
	t.Parallel() // see doc.go
	start := time.Now()
	p := newPlaceWorld(t)
	w := p.world
	a, b := p.hosts[0], p.hosts[1]
	// Its guest runs no OS: the cutover's shutdown ends in a power-off.
	w.shutdownTimeout(testShutdownTimeout)
	src := testenv.NewTestVM(t, w.lv, testenv.VMOptions{RandomBytes: 8 << 20})
	spec := w.named(w.warmSpec(src, false), "hosts/"+b)
	pre, err := w.f.client.Jobs().PreviewMigrationJobs(ctx(t, 60*time.Second), &ferryv1.PreviewMigrationJobsRequest{
		Source: w.source, MigrationServer: w.server, Jobs: []*ferryv1.MigrationJobSpec{spec}})
	must(t, err)
	if len(pre.GetFailedChecks()) > 0 || pre.GetJobs()[0].GetTargetHost() != "hosts/"+b {
		t.Fatalf("preview of a warm job placed on %s: failed checks %q, placed on %s", b, pre.GetFailedChecks(), pre.GetJobs()[0].GetTargetHost())
	}
	name := w.createJob(spec)
	j := w.rounds(name, 1)
	if terminal(j) {
		t.Fatalf("job ended %s before its first round: %s", j.GetState(), j.GetReason())
	}

	// Round 2: writes on both disks while the VM runs.
	kib := int64(1024)
	changed := w.write(src, guestWrite{0, 1 << 20, 64 * kib, 0xa1}, guestWrite{0, 30 << 20, 192 * kib, 0xa2}, guestWrite{1, 200 << 20, 1 << 20, 0xa3})
	j = w.rounds(name, 2)
	if terminal(j) {
		t.Fatalf("job ended %s in round 2: %s", j.GetState(), j.GetReason())
	}
	r2 := j.GetPrecopyRounds()[1]
	if r2.GetChangedBytes() != changed || r2.GetUploadedBytes() != r2.GetReadBytes() {
		t.Errorf("round 2 changed %d bytes, read %d, uploaded %d; want the %d written, uploaded as read",
			r2.GetChangedBytes(), r2.GetReadBytes(), r2.GetUploadedBytes(), changed)
	}
	if j.GetPhase() != syncing {
		t.Errorf("phase between rounds = %s; want SYNCING", j.GetPhase())
	}

	// Round 3 is the cutover's: more writes, then the cutover.
	last := w.write(src, guestWrite{0, 1 << 20, 64 * kib, 0xb1}, guestWrite{1, 100 << 20, 1 << 20, 0}, guestWrite{0, 50 << 20, 256 * kib, 0xc1})
	if out, err := w.f.ferryctl("job", "cutover", name); err != nil || !strings.Contains(out, "cuts over at") {
		t.Fatalf("ferryctl job cutover: %v\n%s", err, out)
	}
	j = w.waitJob(name, 3*time.Minute, "the job to end", terminal)
	rs := expectCutOverRounds(t, j, 3)
	if rs[len(rs)-1].GetChangedBytes() < last {
		t.Fatalf("rounds = %v; want the final one with the %d bytes written last", rs, last)
	}
	t.Logf("final round: changed %d, read %d, uploaded %d, took %v; measured downtime %v", rs[len(rs)-1].GetChangedBytes(),
		rs[len(rs)-1].GetReadBytes(), rs[len(rs)-1].GetUploadedBytes(), rs[len(rs)-1].GetDuration().AsDuration(),
		j.GetMeasuredDowntime().AsDuration())
	testkit.WaitFor(t, 60*time.Second, "the source VM to be powered off", func() bool { return src.State(t) == "shut off" })
	for _, d := range src.Disks {
		compare(t, d.Path, p.volumeOn(b, name, d.Target))
	}
	p.domainOn(b, spec.GetTarget().GetVmName(), true)
	if _, err := os.Stat(filepath.Join(p.storage[a], path.Base(name))); !os.IsNotExist(err) {
		t.Errorf("the job left a directory on %s (the migration server's) storage: %v", a, err)
	}
	// b's agent defined the VM ahead, stopped, and started it; a's never
	// defined one.
	job := fmt.Sprintf("job=%s", name)
	for action, n := range map[string]int{"DEFINE_DOMAIN_STOPPED": 1, "START_DOMAIN": 1} {
		got := 0
		for _, l := range p.agents[b].lines("target work done") {
			if strings.Contains(l, job) && strings.Contains(l, "action=TARGET_ACTION_"+action+" ") {
				got++
			}
		}
		if got != n {
			t.Errorf("%s's agent did %s %d times; want %d", b, action, got, n)
		}
	}
	if left := checkpoints(t, w.lv, src); len(left) > 0 {
		t.Errorf("left on the source: %v", left)
	}

	// Cancelled while SYNCING: nothing on b.
	src2 := testenv.NewTestVM(t, w.lv, testenv.VMOptions{})
	spec2 := w.named(w.warmSpec(src2, false), "hosts/"+b)
	name2 := w.createJob(spec2)
	j = w.waitJob(name2, 2*time.Minute, "SYNCING", func(j *ferryv1.MigrationJob) bool { return terminal(j) || j.GetPhase() == syncing })
	if terminal(j) {
		t.Fatalf("job ended %s before SYNCING: %s", j.GetState(), j.GetReason())
	}
	if _, err := os.Stat(p.volumeOn(b, name2, "vda")); err != nil {
		t.Fatalf("no volume on %s while SYNCING: %v", b, err)
	}
	_, err = w.f.client.Jobs().CancelMigrationJob(ctx(t, 10*time.Second), &ferryv1.CancelMigrationJobRequest{Name: name2})
	must(t, err)
	testkit.WaitFor(t, 90*time.Second, "the volumes on "+b+" to go", func() bool {
		entries, err := os.ReadDir(filepath.Join(p.storage[b], path.Base(name2)))
		return os.IsNotExist(err) || err == nil && len(entries) == 0
	})
	w.expectNoCheckpoints(src2)
	for _, h := range p.hosts {
		if dom := spec2.GetTarget().GetVmName(); slices.Contains(p.libvirt[h].Domains(t, false), dom) {
			t.Errorf("domain %s left on %s after the cancel", dom, h)
		}
	}
	if st := src2.State(t); st != "running" {
		t.Errorf("source VM is %s after the cancel; want running", st)
	}
	t.Logf("TestWarmKVMPlacedOnAnotherHost took %v", time.Since(start).Round(100*time.Millisecond))
}
