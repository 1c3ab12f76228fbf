package runner

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// overlapTarget uploads beside the copy: it uploads each chunk the copy
// has made (counted in copied) until converted closes, then the rest.
type overlapTarget struct {
	copyDriver
	clock  *fakeClock
	copied chan int64 // bytes the source copied, one send per chunk, unbuffered
	fail   error      // returned instead, while the copy runs
}

func (o *overlapTarget) UploadBeside(ctx context.Context, j *Job, converted <-chan struct{}) error {
	var up int64
	for {
		select {
		case n := <-o.copied:
			if o.fail != nil {
				return o.fail
			}
			o.clock.Add(time.Second / 2)
			up += n
			j.Progress.Uploaded("vda", up)
		case <-converted:
			for {
				select {
				case n := <-o.copied:
					up += n
					o.clock.Add(time.Second / 2)
					j.Progress.Uploaded("vda", up)
				default:
					o.clock.Add(time.Second / 2) // the upload's tail
					return nil
				}
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func phaseTiming(t *testing.T, res *agentv1.JobResult, p ferryv1.MigrationJobPhase) *ferryv1.PhaseTiming {
	t.Helper()
	for _, pt := range res.GetPhaseTimings() {
		if pt.GetPhase() == p {
			return pt
		}
	}
	t.Fatalf("no %s in %v", p, res.GetPhaseTimings())
	return nil
}

// The upload runs beside CONVERTING: the job's phase says CONVERTING
// until the copy ends, UPLOADING's timing begins with the copy, and each
// phase's bytes and rate come from its own counts.
func TestUploadBesideTheCopy(t *testing.T) {
	clock := &fakeClock{now: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)}
	o := &overlapTarget{clock: clock, copied: make(chan int64)}
	o.copyDriver = copyDriver{chunks: 4, chunk: 250, tick: func() { clock.Add(time.Second); o.copied <- 250 }}
	rec := newRecorder()
	r := startRunner(t, Config{}, Deps{Drivers: Drivers{Sources: map[ferryv1.Platform]Source{ferryv1.Platform_PLATFORM_KVM: o}, Target: o},
		Reporter: rec, Now: clock.Now})
	if err := r.Start(assignment(t, "migrationJobs/a", 1, "vda")); err != nil {
		t.Fatal(err)
	}
	res := rec.result(t)
	if res.GetOutcome() != agentv1.JobOutcome_JOB_OUTCOME_SUCCEEDED {
		t.Fatalf("result = %v", res)
	}
	if got := strings.Join(o.calls, ","); got != "convert,configure" {
		t.Fatalf("calls = %s: the overlapping target is not asked to Upload", got)
	}
	conv := phaseTiming(t, res, ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONVERTING)
	up := phaseTiming(t, res, ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_UPLOADING)
	if !up.GetStartTime().AsTime().Equal(conv.GetStartTime().AsTime()) || !up.GetEndTime().AsTime().After(conv.GetEndTime().AsTime()) {
		t.Errorf("UPLOADING %v–%v, CONVERTING %v–%v: want the upload from the copy's start to after its end",
			up.GetStartTime().AsTime(), up.GetEndTime().AsTime(), conv.GetStartTime().AsTime(), conv.GetEndTime().AsTime())
	}
	if conv.GetBytes() != 1000 || up.GetBytes() != 1000 {
		t.Errorf("bytes: CONVERTING %d, UPLOADING %d, want 1000 each", conv.GetBytes(), up.GetBytes())
	}
	secs := conv.GetEndTime().AsTime().Sub(conv.GetStartTime().AsTime()).Seconds()
	if conv.GetBytesPerSecond() != 1000/secs {
		t.Errorf("CONVERTING rate %v, want %v", conv.GetBytesPerSecond(), 1000/secs)
	}
	// Progress said CONVERTING while the upload ran beside the copy, and
	// carried the timings so far.
	sawBeside := false
	for _, p := range rec.progress {
		if p.GetPhase() == ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONVERTING && len(p.GetPhaseTimings()) == 2 {
			sawBeside = true
		}
		if p.GetPhase() == ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_UPLOADING && p.GetDisks()[0].GetDoneBytes() == 0 {
			t.Errorf("UPLOADING reported 0 bytes done: the upload beside the copy was not carried over")
		}
	}
	if !sawBeside {
		t.Errorf("no CONVERTING progress showed UPLOADING's timing")
	}
}

// An upload that fails while the copy runs fails the job at once, with
// the upload step in the reason.
func TestUploadBesideFailsTheJob(t *testing.T) {
	clock := &fakeClock{now: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)}
	o := &overlapTarget{clock: clock, copied: make(chan int64), fail: errors.New("volume full")}
	o.copyDriver = copyDriver{block: true}
	rec := newRecorder()
	r := startRunner(t, Config{}, Deps{Drivers: Drivers{Sources: map[ferryv1.Platform]Source{ferryv1.Platform_PLATFORM_KVM: o}, Target: o},
		Reporter: rec, Now: clock.Now})
	if err := r.Start(assignment(t, "migrationJobs/a", 1, "vda")); err != nil {
		t.Fatal(err)
	}
	o.copied <- 250
	res := rec.result(t)
	if res.GetOutcome() != agentv1.JobOutcome_JOB_OUTCOME_FAILED || res.GetReason() != "upload the disks to primary storage: volume full" {
		t.Fatalf("result = %v", res)
	}
	for _, pt := range res.GetPhaseTimings() {
		if pt.GetEndTime() == nil {
			t.Errorf("phase %s of the failed job has no end", pt.GetPhase())
		}
	}
}
