package vmware

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/vmware/govmomi/vim25/types"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// Warm jobs whose agent was killed: the restarted agent is a new run of
// the driver (StartPrecopy from the last token, a new Driver) on the
// same cache directory and the same VM.

// TestPrecopyResumesAfterAKilledRound: an agent killed in the middle of
// round 2 leaves that round's snapshot (named as the round names it) and
// the token of round 1. The next run's StartPrecopy removes the snapshot
// before any round, and its round is round 2 against round 1's change
// ids: the blocks written before and after the kill and nothing more, the
// cache images then the source disks byte for byte.
func TestPrecopyResumesAfterAKilledRound(t *testing.T) {
	w := newWarm(t, false, true)
	ctx := testContext(t, 2*time.Minute)
	p := w.start(t, ctx, PrecopyOptions{})
	first, err := p.Round(ctx)
	if err != nil {
		t.Fatal(err)
	}
	p.Close()
	rng := rand.New(rand.NewPCG(5, 6))
	ws := []write{{disk: 0, off: 2 << 20, n: 100 << 10}, {disk: 1, off: 6 << 20, n: 1}}
	w.apply(t, rng, ws)
	// What the killed agent's round 2 left: its snapshot, with change ids.
	task, err := w.vm.CreateSnapshot(ctx, SnapshotPrefix+"warm1-round-2", "a round of an agent that was killed", false, false)
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		t.Fatal(err)
	}
	more := []write{{disk: 0, off: 2 << 20, n: 10}, {disk: 1, off: 12 << 20, n: 64 << 10}}
	w.apply(t, rng, more)
	ws = append(ws, more...)

	p2 := w.start(t, ctx, PrecopyOptions{Token: first.Token})
	w.checkNoSnapshot(t, "after the restarted run started")
	if p2.Rounds() != 1 {
		t.Fatalf("the restarted run goes on after round %d, want 1", p2.Rounds())
	}
	res, err := p2.Round(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("round %d after the restart: changed %d, read %d bytes", res.Round, res.ChangedBytes, res.ReadBytes)
	if res.Round != 2 || res.Full {
		t.Errorf("round %d full %v after the restart; want round 2, not full", res.Round, res.Full)
	}
	for d, dr := range res.Disks {
		if dr.PrevChangeID != first.Disks[d].ChangeID {
			t.Errorf("disk %s: asked against %q, not round 1's change id %q", dr.Disk, dr.PrevChangeID, first.Disks[d].ChangeID)
		}
		if want := wantChanged(ws, d, warmDiskSize); !sameAreas(dr.Changed, want) {
			t.Errorf("disk %s: tracking reported %v, the writes touched %v", dr.Disk, dr.Changed, want)
		}
		if limit := dr.ChangedBytes + int64(len(dr.Changed))*cache.Granule; dr.ReadBytes > limit || dr.ReadBytes < dr.ChangedBytes {
			t.Errorf("disk %s: read %d bytes for %d changed in %d areas (at most %d)", dr.Disk, dr.ReadBytes, dr.ChangedBytes, len(dr.Changed), limit)
		}
	}
	w.checkCache(t, 2)
	w.checkExtents(t, res)
	w.checkNoSnapshot(t, "after round 2")
}

// TestEndWarmAfterAKilledCutover: the agent that stopped the source for
// the cutover is killed; the agent back (a new Driver, the same cache
// directory) finds the VM off, so its StopSource stops nothing, and
// still powers the VM on again when the cutover then fails; after a
// cutover that succeeds it leaves the VM off. Either way the record of
// the stop goes, and EndWarm called again does nothing more.
func TestEndWarmAfterAKilledCutover(t *testing.T) {
	for _, succeeded := range []bool{false, true} {
		t.Run(map[bool]string{false: "failed", true: "succeeded"}[succeeded], func(t *testing.T) {
			w := newWarm(t, false, true)
			ctx := testContext(t, 2*time.Minute)
			if _, err := w.driver.WarmRound(ctx, w.job, "", false); err != nil {
				t.Fatal(err)
			}
			if err := w.driver.StopSource(ctx, w.job); err != nil {
				t.Fatalf("StopSource: %v", err)
			}
			// Killed here; the agent back runs the cutover again.
			back := NewDriver(testkit.Logger(t), Options{RetryBudget: 10 * time.Second, RetryBackoffMin: 10 * time.Millisecond})
			if err := back.StopSource(ctx, w.job); err != nil {
				t.Fatalf("StopSource of the agent back: %v", err)
			}
			if st := w.powerState(); st != types.VirtualMachinePowerStatePoweredOff {
				t.Fatalf("after StopSource the VM is %s", st)
			}
			for range 2 {
				if err := back.EndWarm(ctx, w.job, succeeded); err != nil {
					t.Fatalf("EndWarm(%v): %v", succeeded, err)
				}
			}
			want := types.VirtualMachinePowerStatePoweredOn
			if succeeded {
				want = types.VirtualMachinePowerStatePoweredOff
			}
			if st := w.powerState(); st != want {
				t.Errorf("after EndWarm(succeeded %v) of the agent back the VM is %s, want %s", succeeded, st, want)
			}
			if how, _, ok := w.job.SourceStoppedMark(); ok {
				t.Errorf("the record of the stop (%q) is left after EndWarm; want it gone", how)
			}
			w.checkNoSnapshot(t, "after EndWarm")
		})
	}
}
