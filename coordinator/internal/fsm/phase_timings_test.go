package fsm

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

func pt(phase ferryv1.MigrationJobPhase, start, end float64, bytes int64, rate float64) *ferryv1.PhaseTiming {
	at := func(s float64) *timestamppb.Timestamp {
		return timestamppb.New(t0.Add(time.Duration(s * float64(time.Second))))
	}
	p := &ferryv1.PhaseTiming{Phase: phase, StartTime: at(start), Bytes: bytes, BytesPerSecond: rate}
	if end >= 0 {
		p.EndTime = at(end)
	}
	return p
}

const (
	conv = ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONVERTING
	upl  = ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_UPLOADING
	cfg  = ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONFIGURING
)

// Phase timings are recorded from checkpoints and the result when they
// are sound, survive a snapshot, and start over with the next attempt;
// unsound ones are left out and the rest of the report is recorded.
func TestPhaseTimings(t *testing.T) {
	f := New(ledger.New(), nil)
	applyAll(t, f, inventoryCommands())
	checkpoint := func(sec int, ts ...*ferryv1.PhaseTiming) *ledgerv1.Command {
		return cmdAt(sec, &ledgerv1.Command{Op: &ledgerv1.Command_CheckpointMigrationJob{CheckpointMigrationJob: &ledgerv1.CheckpointMigrationJob{
			Name: "migrationJobs/p", Epoch: 1, Phase: upl, PhaseTimings: ts,
			Disks: []*ferryv1.DiskProgress{{SourceDisk: "vda", DoneBytes: int64(sec)}}}}})
	}
	applyAll(t, f, []*ledgerv1.Command{
		cmdAt(100, &ledgerv1.Command{Op: &ledgerv1.Command_CreateMigrationJobs{CreateMigrationJobs: &ledgerv1.CreateMigrationJobs{
			Jobs: []*ferryv1.MigrationJob{job("migrationJobs/p", "10.0.0.16")}}}}),
		cmdAt(101, &ledgerv1.Command{Op: &ledgerv1.Command_StartMigrationJob{StartMigrationJob: &ledgerv1.StartMigrationJob{Name: "migrationJobs/p", Host: "hosts/h1", Epoch: 1}}}),
		checkpoint(102, pt(conv, 0, -1, 100, 50), pt(upl, 0.5, -1, 40, 20)),
	})
	get := func() *ferryv1.MigrationJob {
		j, _ := f.Ledger().Job("migrationJobs/p")
		return j
	}
	want := []*ferryv1.PhaseTiming{pt(conv, 0, -1, 100, 50), pt(upl, 0.5, -1, 40, 20)}
	if got := get().GetPhaseTimings(); !equalTimings(got, want) {
		t.Fatalf("timings after the first checkpoint:\n got %v\nwant %v", got, want)
	}

	for _, tc := range []struct {
		name string
		ts   []*ferryv1.PhaseTiming
		why  string
	}{
		{"end before start", []*ferryv1.PhaseTiming{pt(conv, 2, 1, 100, 0)}, "phase_timings[0].end_time"},
		{"starts out of order", []*ferryv1.PhaseTiming{pt(upl, 1, -1, 0, 0), pt(conv, 0, -1, 0, 0)}, "phase_timings[1].start_time"},
		{"a phase twice", []*ferryv1.PhaseTiming{pt(conv, 0, -1, 0, 0), pt(conv, 0, -1, 0, 0)}, "phase_timings[1].phase"},
		{"no phase", []*ferryv1.PhaseTiming{pt(0, 0, -1, 0, 0)}, "phase_timings[0].phase"},
		{"no start", []*ferryv1.PhaseTiming{{Phase: conv}}, "phase_timings[0].start_time"},
		{"more bytes than the disks", []*ferryv1.PhaseTiming{pt(conv, 0, -1, 1<<30+1, 0)}, "phase_timings[0].bytes"},
		{"negative bytes", []*ferryv1.PhaseTiming{pt(conv, 0, -1, -1, 0)}, "phase_timings[0].bytes"},
		{"a start going back", []*ferryv1.PhaseTiming{pt(conv, -1, -1, 0, 0)}, "phase_timings[0].start_time"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := ledger.CheckPhaseTimings(get(), tc.ts)
			if err == nil || !strings.HasPrefix(err.Error(), tc.why) {
				t.Fatalf("CheckPhaseTimings = %v, want an error about %s", err, tc.why)
			}
			applyAll(t, f, []*ledgerv1.Command{checkpoint(103, tc.ts...)})
			if j := get(); !equalTimings(j.GetPhaseTimings(), want) || j.GetDisks()[0].GetDoneBytes() != 103 {
				t.Fatalf("a refused timing changed the job: timings %v, disks %v", j.GetPhaseTimings(), j.GetDisks())
			}
		})
	}

	// The result ends every phase; the ledger computes the rates of ended
	// phases from their bytes and times.
	final := []*ferryv1.PhaseTiming{pt(conv, 0, 4, 100, 1), pt(upl, 0.5, 5, 90, 1), pt(cfg, 5, 5, 0, 0)}
	applyAll(t, f, []*ledgerv1.Command{cmdAt(110, &ledgerv1.Command{Op: &ledgerv1.Command_FinishMigrationJob{FinishMigrationJob: &ledgerv1.FinishMigrationJob{
		Name: "migrationJobs/p", Epoch: 1, State: ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED, Reason: "r", PhaseTimings: final}}})})
	want = []*ferryv1.PhaseTiming{pt(conv, 0, 4, 100, 25), pt(upl, 0.5, 5, 90, 20), pt(cfg, 5, 5, 0, 0)}
	if got := get().GetPhaseTimings(); !equalTimings(got, want) {
		t.Fatalf("timings of the finished job:\n got %v\nwant %v", got, want)
	}

	g := restored(t, f)
	if j, _ := g.Ledger().Job("migrationJobs/p"); !equalTimings(j.GetPhaseTimings(), want) {
		t.Fatalf("timings after a snapshot: %v", j.GetPhaseTimings())
	}

	// They describe the latest attempt until the next one starts.
	applyAll(t, f, []*ledgerv1.Command{
		cmdAt(120, &ledgerv1.Command{Op: &ledgerv1.Command_RestartMigrationJob{RestartMigrationJob: &ledgerv1.RestartMigrationJob{Name: "migrationJobs/p"}}}),
	})
	if !equalTimings(get().GetPhaseTimings(), want) {
		t.Fatalf("restarting the job changed its timings: %v", get().GetPhaseTimings())
	}
	applyAll(t, f, []*ledgerv1.Command{
		cmdAt(121, &ledgerv1.Command{Op: &ledgerv1.Command_StartMigrationJob{StartMigrationJob: &ledgerv1.StartMigrationJob{Name: "migrationJobs/p", Host: "hosts/h1", Epoch: 2}}}),
	})
	if got := get().GetPhaseTimings(); len(got) != 0 {
		t.Fatalf("the second attempt starts with the first one's timings: %v", got)
	}
}

func equalTimings(a, b []*ferryv1.PhaseTiming) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !proto.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}
