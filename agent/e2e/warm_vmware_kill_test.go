package e2e

import (
	"bytes"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi/vim25/types"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferry-v2v/ferry/agent/internal/source/vmware"
	"github.com/ferry-v2v/ferry/agent/internal/source/vmware/vcsimtest"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// TestWarmVMwareAgentKilled: the agent of a warm VMware job killed
// (SIGKILL) after round 1, between rounds or in the middle of round 2,
// resumes once back at round 2 against round 1's change ids: no round
// repeated or lost, no new full copy, round 2 carries exactly the blocks
// written meanwhile (the ones written while the agent was dead included)
// and reads no more than them plus one 64 KiB granule per write, the
// snapshot a killed round left is gone before the next round ends, and
// the cutover leaves the target volume identical to the source disk, the
// VM powered off and no snapshot. Killed in the cutover's round (the
// source stopped), the agent back finishes the cutover: round 2 is the
// final one, of the last writes, and the outcome is the same; or, when
// the cutover then fails, powers the source on again, though it found it
// off.
func TestWarmVMwareAgentKilled(t *testing.T) {
	t.Parallel() // see doc.go
	start := time.Now()
	// A world each: the simulator gives every VM the same MAC, which a
	// target before keeps on the world's network.
	t.Run("between rounds", func(t *testing.T) {
		// The kill comes well before round 2 would start (slowRounds);
		// the test checks it did not, from the simulator's record.
		w := newWorld(t)
		v := w.warmVMwareJob(t, w.createVMwareServer(), slowRounds)
		w.syncingAfterRound1(t, v)
		w.f.agents[w.vmwareHost()].kill()
		for _, q := range v.sim.CBTQueries() {
			if q.ChangeID != vmware.FirstChangeID {
				t.Fatalf("round 2 had asked for changes (%+v) before the agent was killed: not a kill between rounds", q)
			}
		}
		block := dataBlock(t, v.flat)
		writes := []blockWrite{{2 << 20, 128 << 10, 0xd1}, {24 << 20, 64 << 10, 0xd2}, {block, 64 << 10, 0}}
		changed := v.write(t, writes...)
		w.f.startAgent(w.vmwareHost(), w.cacheDir)
		w.expectRound2(t, v, changed, len(writes))
		w.cutoverKilled(t, v)
	})
	t.Run("mid-round", func(t *testing.T) {
		// Round 2 is held in its first read of the source (its snapshot
		// taken, the changes asked) and the agent killed there; more is
		// written while it is dead.
		w := newWorld(t)
		v := w.warmVMwareJob(t, w.createVMwareServer(), slowRounds)
		w.syncingAfterRound1(t, v)
		before := []blockWrite{{1 << 20, 64 << 10, 0xe1}, {3 << 20, 192 << 10, 0xe2}}
		changed := v.write(t, before...)
		held := v.sim.HoldFolder()
		select {
		case <-held:
		case <-time.After(2 * time.Minute):
			v.sim.ReleaseFolder()
			t.Fatal("round 2 did not start reading the source within 2 minutes")
		}
		w.f.agents[w.vmwareHost()].kill()
		v.sim.ReleaseFolder()
		stale := v.snapshotNames()
		want := vmware.SnapshotPrefix + path.Base(v.name) + "-round-2"
		if len(stale) != 1 || stale[0] != want {
			t.Fatalf("snapshots of the VM after the kill in round 2: %v; want the round's %s", stale, want)
		}
		// An overwrite of a block round 2 was about to read, and a new one.
		after := []blockWrite{{1 << 20, 64 << 10, 0xe3}, {28 << 20, 64 << 10, 0xe4}}
		changed += v.write(t, after...) - 64<<10 // the overwrite's block counts once
		w.f.startAgent(w.vmwareHost(), w.cacheDir)
		w.expectRound2(t, v, changed, len(before)+len(after))
		w.cutoverKilled(t, v)
	})
	for _, fails := range []bool{false, true} {
		name := map[bool]string{false: "during the cutover", true: "during the cutover, which then fails"}[fails]
		t.Run(name, func(t *testing.T) { w := newWorld(t); w.killInCutover(t, fails) })
	}
	t.Logf("TestWarmVMwareAgentKilled took %v", time.Since(start).Round(100*time.Millisecond))
}

// killInCutover holds the cutover's round in its first read (the source
// stopped), kills the agent there and starts it again. The agent back
// finishes the cutover: round 2, final, of the last writes. With fails,
// changed-block tracking then fails every question: the job fails, and
// the agent back, which found the source off, powers it on again.
func (w *world) killInCutover(t *testing.T, fails bool) {
	v := w.warmVMwareJob(t, w.createVMwareServer(), slowRounds)
	w.syncingAfterRound1(t, v)
	last := v.write(t, blockWrite{5 << 20, 128 << 10, 0xf1}, blockWrite{26 << 20, 64 << 10, 0xf2})
	held := v.sim.HoldFolder()
	_, err := w.f.client.Jobs().CutoverMigrationJob(ctx(t, 10*time.Second), &ferryv1.CutoverMigrationJobRequest{Name: v.name})
	must(t, err)
	select {
	case <-held:
	case <-time.After(2 * time.Minute):
		v.sim.ReleaseFolder()
		t.Fatal("the cutover's round did not start reading the source within 2 minutes")
	}
	if st := v.simVM().Runtime.PowerState; st != types.VirtualMachinePowerStatePoweredOff {
		t.Errorf("the source VM is %s in the cutover's round, want poweredOff", st)
	}
	w.f.agents[w.vmwareHost()].kill()
	v.sim.ReleaseFolder()
	if fails {
		v.sim.FailCBTQueries(1 << 20)
	}
	w.f.startAgent(w.vmwareHost(), w.cacheDir)
	if !fails {
		rs := w.expectCutOver(t, v, 2).GetPrecopyRounds()
		if final := rs[len(rs)-1]; final.GetNumber() != 2 || final.GetChangedBytes() != last || final.GetReadBytes() != last {
			t.Errorf("the cutover's round after the restart: %v; want round 2 of the %d bytes written last", final, last)
		}
		return
	}
	j := w.waitJob(v.name, 3*time.Minute, "the job to end", terminal)
	if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED || !strings.Contains(j.GetReason(), "injected QueryChangedDiskAreas failure") {
		t.Fatalf("job ended %s in %s: %s; want FAILED for the tracking's failure", j.GetState(), j.GetPhase(), j.GetReason())
	}
	testkit.WaitFor(t, time.Minute, "the source VM to be powered on again", func() bool {
		return v.simVM().Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn
	})
	w.expectVolumesGone(v.name)
	if _, err := w.lv.TryVirsh("domstate", j.GetTarget().GetVmName()); err == nil {
		t.Errorf("target VM %s exists after the failed cutover", j.GetTarget().GetVmName())
	}
	if left := v.snapshotNames(); len(left) > 0 {
		t.Errorf("the source VM keeps snapshots after the failed cutover: %v", left)
	}
}

// slowRounds puts 30 s between rounds: a loaded machine's test sees
// round 1 and acts (kills the agent, or writes and holds the reads) long
// before round 2 starts.
func slowRounds(spec *ferryv1.MigrationJobSpec) {
	spec.Options.PrecopyInterval = durationpb.New(30 * time.Second)
}

// blockWrite is a write of whole 64 KiB blocks (the simulator's
// changed-block tracking granularity) into a simulator VM's disk.
type blockWrite struct {
	off, length int64
	pattern     byte
}

// write makes ws into v's disk and returns the bytes written.
func (v warmVMware) write(t *testing.T, ws ...blockWrite) (n int64) {
	t.Helper()
	for _, b := range ws {
		if b.off%vcsimtest.CBTBlock != 0 || b.length%vcsimtest.CBTBlock != 0 {
			t.Fatalf("write %+v is not of whole %d-byte blocks", b, vcsimtest.CBTBlock)
		}
		v.sim.WriteDisk(t, v.ref, v.key, bytes.Repeat([]byte{b.pattern}, int(b.length)), b.off)
		n += b.length
	}
	return n
}

// dataBlock is the offset of the first 64 KiB block from 4 MiB on in the
// flat disk file that holds data, for a write of zeroes to change.
func dataBlock(t *testing.T, flat string) int64 {
	t.Helper()
	b, err := os.ReadFile(flat)
	must(t, err)
	zero := make([]byte, vcsimtest.CBTBlock)
	for off := int64(4 << 20); off+vcsimtest.CBTBlock <= int64(len(b)); off += vcsimtest.CBTBlock {
		if !bytes.Equal(b[off:off+vcsimtest.CBTBlock], zero) {
			return off
		}
	}
	t.Fatalf("no block of data in %s", flat)
	return 0
}

// snapshotNames lists the names of the snapshots the simulator's VM
// keeps, depth first.
func (v warmVMware) snapshotNames() []string {
	sv := v.simVM()
	if sv.Snapshot == nil {
		return nil
	}
	var out []string
	var walk func([]types.VirtualMachineSnapshotTree)
	walk = func(ts []types.VirtualMachineSnapshotTree) {
		for _, s := range ts {
			out = append(out, s.Name)
			walk(s.ChildSnapshotList)
		}
	}
	walk(sv.Snapshot.RootSnapshotList)
	return out
}

// syncingAfterRound1 waits until v's job recorded round 1 and is SYNCING.
func (w *world) syncingAfterRound1(t *testing.T, v warmVMware) {
	t.Helper()
	j := w.waitJob(v.name, 2*time.Minute, "round 1 and SYNCING", func(j *ferryv1.MigrationJob) bool {
		return terminal(j) || len(j.GetPrecopyRounds()) >= 1 && j.GetPhase() == syncing
	})
	if terminal(j) {
		t.Fatalf("job ended %s before SYNCING: %s", j.GetState(), j.GetReason())
	}
	if rs := j.GetPrecopyRounds(); len(rs) != 1 || rs[0].GetNumber() != 1 {
		t.Fatalf("rounds before the kill = %v; want round 1 only", rs)
	}
}

// expectRound2 waits for the round after the restart and checks it is
// round 2, of the changed bytes written in writes writes, read with at
// most one 64 KiB granule more per write, and that no snapshot is left
// (a killed round's included).
func (w *world) expectRound2(t *testing.T, v warmVMware, changed int64, writes int) {
	t.Helper()
	j := w.waitJob(v.name, 3*time.Minute, "precopy round 2 after the restart", func(j *ferryv1.MigrationJob) bool {
		return terminal(j) || len(j.GetPrecopyRounds()) >= 2
	})
	if terminal(j) {
		t.Fatalf("job ended %s after the agent came back: %s", j.GetState(), j.GetReason())
	}
	rs := j.GetPrecopyRounds()
	r2 := rs[1]
	if len(rs) != 2 || r2.GetNumber() != 2 || r2.GetChangedBytes() != changed {
		t.Errorf("rounds after the restart = %v; want round 2 of the %d bytes written", rs, changed)
	}
	if max := changed + int64(writes)*64<<10; r2.GetReadBytes() < changed || r2.GetReadBytes() > max {
		t.Errorf("round 2 read %d bytes; want %d to %d (changed + one 64 KiB granule per write)", r2.GetReadBytes(), changed, max)
	}
	if r2.GetUploadedBytes() != r2.GetReadBytes() {
		t.Errorf("round 2 uploaded %d bytes; want the %d it read", r2.GetUploadedBytes(), r2.GetReadBytes())
	}
	if left := v.snapshotNames(); len(left) > 0 {
		t.Errorf("snapshots left on the VM after round 2: %v", left)
	}
	if l := w.f.agents[w.vmwareHost()].lines("warm job resumes after its last completed round"); len(l) != 1 || !strings.Contains(l[0], " round=1") {
		t.Errorf("the restarted agent logged %v; want that it resumes after round 1", l)
	}
	t.Logf("round 2 after the restart: changed %d, read %d, uploaded %d, took %v", r2.GetChangedBytes(), r2.GetReadBytes(),
		r2.GetUploadedBytes(), r2.GetDuration().AsDuration())
}

// cutoverKilled cuts v's job over and checks the outcome: SUCCEEDED,
// rounds numbered 1, 2, ... once each, the target volume identical to the
// source disk, the VM powered off and without snapshots, the job's
// volume directory holding that volume only, and no record of the rounds
// left in the cache.
func (w *world) cutoverKilled(t *testing.T, v warmVMware) {
	t.Helper()
	_, err := w.f.client.Jobs().CutoverMigrationJob(ctx(t, 10*time.Second), &ferryv1.CutoverMigrationJobRequest{Name: v.name})
	must(t, err)
	w.expectCutOver(t, v, 3)
}

// expectCutOver waits for v's job to end and checks what cutoverKilled
// says, with at least rounds rounds; it returns the job.
func (w *world) expectCutOver(t *testing.T, v warmVMware, rounds int) *ferryv1.MigrationJob {
	t.Helper()
	j := w.waitJob(v.name, 3*time.Minute, "the job to end", terminal)
	rs := expectCutOverRounds(t, j, rounds)
	compare(t, v.flat, w.volume(v.name, strconv.Itoa(int(v.key))))
	testkit.WaitFor(t, 30*time.Second, "the snapshots to go", func() bool { return len(v.snapshotNames()) == 0 })
	if st := v.simVM().Runtime.PowerState; st != types.VirtualMachinePowerStatePoweredOff {
		t.Errorf("the source VM is %s after the cutover, want poweredOff", st)
	}
	entries, err := os.ReadDir(filepath.Dir(w.volume(v.name, "x")))
	must(t, err)
	var files []string
	for _, e := range entries {
		files = append(files, e.Name())
	}
	if want := strconv.Itoa(int(v.key)) + ".qcow2"; len(files) != 1 || files[0] != want {
		t.Errorf("the job's volume directory holds %v; want %s only", files, want)
	}
	// The record of the rounds (their change ids) goes with the job.
	warm := filepath.Join(w.cacheDir, path.Base(v.name), "warm.json")
	testkit.WaitFor(t, 30*time.Second, "the record of the rounds to go", func() bool {
		_, err := os.Stat(warm)
		return os.IsNotExist(err)
	})
	t.Logf("%d rounds: %v; measured downtime %v", len(rs), rs, j.GetMeasuredDowntime().AsDuration())
	return j
}
