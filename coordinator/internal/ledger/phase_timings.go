package ledger

import (
	"fmt"
	"math"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// CheckPhaseTimings says why an agent's phase timings cannot be recorded
// on job j, or nil when they can: each phase at most once, a start and an
// end no earlier than it, starts in order, bytes from 0 to the sum of the
// job's disk sizes, and none going back on what is recorded (a phase may
// start again later, when an agent resumes the job, but not earlier, and
// an ended phase cannot end earlier or reopen). The session drops timings
// that fail it; the ledger never records them.
func CheckPhaseTimings(j *ferryv1.MigrationJob, ts []*ferryv1.PhaseTiming) error {
	var disks int64
	for _, d := range j.GetTarget().GetDisks() {
		disks += d.GetSizeBytes()
	}
	recorded := map[ferryv1.MigrationJobPhase]*ferryv1.PhaseTiming{}
	for _, t := range j.GetPhaseTimings() {
		recorded[t.GetPhase()] = t
	}
	seen := map[ferryv1.MigrationJobPhase]bool{}
	for i, t := range ts {
		field := fmt.Sprintf("phase_timings[%d]", i)
		switch t.GetPhase() {
		case ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONVERTING, ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_UPLOADING,
			ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONFIGURING, ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_SYNCING,
			ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_EXPORTING,
			ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_PREPARING:
		default:
			return fmt.Errorf("%s.phase: %s is not a phase", field, t.GetPhase())
		}
		if seen[t.GetPhase()] {
			return fmt.Errorf("%s.phase: %s twice", field, t.GetPhase())
		}
		seen[t.GetPhase()] = true
		if !t.GetStartTime().IsValid() {
			return fmt.Errorf("%s.start_time: missing or invalid", field)
		}
		start := t.GetStartTime().AsTime()
		if t.GetEndTime() != nil && (!t.GetEndTime().IsValid() || t.GetEndTime().AsTime().Before(start)) {
			return fmt.Errorf("%s.end_time: before start_time or invalid", field)
		}
		if i > 0 && start.Before(ts[i-1].GetStartTime().AsTime()) {
			return fmt.Errorf("%s.start_time: before the start of %s", field, ts[i-1].GetPhase())
		}
		if t.GetBytes() < 0 || t.GetBytes() > disks {
			return fmt.Errorf("%s.bytes: %d outside 0 to the job's %d bytes of disks", field, t.GetBytes(), disks)
		}
		if r := t.GetBytesPerSecond(); r < 0 || math.IsNaN(r) || math.IsInf(r, 0) {
			return fmt.Errorf("%s.bytes_per_second: %v", field, r)
		}
		old, ok := recorded[t.GetPhase()]
		if !ok {
			continue
		}
		oldStart := old.GetStartTime().AsTime()
		switch {
		case start.Before(oldStart):
			return fmt.Errorf("%s.start_time: before the recorded start of %s", field, t.GetPhase())
		case start.Equal(oldStart) && old.GetEndTime() != nil &&
			(t.GetEndTime() == nil || t.GetEndTime().AsTime().Before(old.GetEndTime().AsTime())):
			return fmt.Errorf("%s.end_time: %s ended already, later", field, t.GetPhase())
		}
	}
	return nil
}

// setPhaseTimings records ts on j when they pass CheckPhaseTimings, with
// the rate of an ended phase computed from its bytes and duration; empty
// or failing timings leave the recorded ones.
func setPhaseTimings(j *ferryv1.MigrationJob, ts []*ferryv1.PhaseTiming) {
	if len(ts) == 0 || CheckPhaseTimings(j, ts) != nil {
		return
	}
	out := make([]*ferryv1.PhaseTiming, len(ts))
	for i, t := range ts {
		c := &ferryv1.PhaseTiming{Phase: t.GetPhase(), StartTime: t.GetStartTime(), EndTime: t.GetEndTime(), Bytes: t.GetBytes(),
			BytesPerSecond: t.GetBytesPerSecond()}
		if t.GetEndTime() != nil {
			c.BytesPerSecond = 0
			if secs := t.GetEndTime().AsTime().Sub(t.GetStartTime().AsTime()).Seconds(); secs > 0 {
				c.BytesPerSecond = float64(t.GetBytes()) / secs
			}
		}
		out[i] = c
	}
	j.PhaseTimings = out
}
