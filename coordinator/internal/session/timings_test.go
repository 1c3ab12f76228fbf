package session

import (
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// TestPhaseTimingsFromTheAgent: the phase timings the job's agent reports
// are recorded in the ledger; timings
// the ledger cannot record (an end before its start, more bytes than the
// job's disks, a start going back) are dropped while the rest of the
// report is recorded; the result's timings end the job's.
func TestPhaseTimingsFromTheAgent(t *testing.T) {
	// Every report is checkpointed, so that each one's fate shows.
	f := newFixture(t, Config{CheckpointInterval: time.Millisecond}, true)
	job := f.seedJob("hosts/h1", 1<<30)
	f.start(job, "hosts/h1", 1)
	a := f.connect(hello("h1", &agentv1.HeldJob{Job: job, Epoch: 1, Phase: phaseConverting}))
	a.next() // welcome
	base := time.Now().Add(-time.Minute)
	at := func(s float64) *timestamppb.Timestamp {
		return timestamppb.New(base.Add(time.Duration(s * float64(time.Second))))
	}
	progress := func(done int64, ts ...*ferryv1.PhaseTiming) {
		a.send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Progress{Progress: &agentv1.JobProgress{
			Job: job, Epoch: 1, Phase: phaseConverting, PhaseTimings: ts,
			Disks: []*ferryv1.DiskProgress{{SourceDisk: "vda", TotalBytes: 1 << 30, DoneBytes: done}}}}})
	}
	recorded := func(what string, ok func(j *ferryv1.MigrationJob) bool) *ferryv1.MigrationJob {
		t.Helper()
		var j *ferryv1.MigrationJob
		// Generous: what is waited for comes at once on a quiet machine
		// and took over 5 s in a fresh-machine run beside CI.
		testkit.WaitFor(t, 30*time.Second, what, func() bool {
			j, _ = f.ledger.Job(job)
			return ok(j)
		})
		return j
	}

	// CONVERTING runs; UPLOADING begins beside it: checkpointed at once.
	conv := &ferryv1.PhaseTiming{Phase: phaseConverting, StartTime: at(0), Bytes: 1 << 20, BytesPerSecond: 1 << 19}
	upl := &ferryv1.PhaseTiming{Phase: phaseUploading, StartTime: at(0.5), Bytes: 0}
	progress(1<<20, conv)
	recorded("CONVERTING's timing", func(j *ferryv1.MigrationJob) bool { return len(j.GetPhaseTimings()) == 1 })
	progress(2<<20, conv, upl)
	j := recorded("UPLOADING's timing", func(j *ferryv1.MigrationJob) bool { return len(j.GetPhaseTimings()) == 2 })
	if got := j.GetPhaseTimings()[1]; got.GetPhase() != phaseUploading || !got.GetStartTime().AsTime().Equal(at(0.5).AsTime()) {
		t.Fatalf("UPLOADING timing %v", got)
	}

	// Unsound timings are dropped; the progress they came with is not.
	for i, bad := range [][]*ferryv1.PhaseTiming{
		{{Phase: phaseConverting, StartTime: at(0), EndTime: at(-1)}},
		{{Phase: phaseConverting, StartTime: at(0), EndTime: at(1), Bytes: 1<<30 + 1}},
		{{Phase: phaseConverting, StartTime: at(-5)}},
	} {
		done := int64(3+i) << 20
		progress(done, bad...)
		j := recorded("the progress beside unsound timings", func(j *ferryv1.MigrationJob) bool {
			return len(j.GetDisks()) == 1 && j.GetDisks()[0].GetDoneBytes() == done
		})
		if len(j.GetPhaseTimings()) != 2 || j.GetPhaseTimings()[0].GetEndTime() != nil {
			t.Fatalf("unsound timings %v were recorded: %v", bad, j.GetPhaseTimings())
		}
	}

	// The result carries every phase ended; the ledger's rates come from
	// bytes and times.
	final := []*ferryv1.PhaseTiming{
		{Phase: phaseConverting, StartTime: at(0), EndTime: at(8), Bytes: 800 << 20},
		{Phase: phaseUploading, StartTime: at(0.5), EndTime: at(10.5), Bytes: 800 << 20},
		{Phase: ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONFIGURING, StartTime: at(10.5), EndTime: at(11)},
	}
	a.send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Result{Result: &agentv1.JobResult{
		Job: job, Epoch: 1, Outcome: agentv1.JobOutcome_JOB_OUTCOME_SUCCEEDED, PhaseTimings: final}}})
	j = recorded("the job to succeed", func(j *ferryv1.MigrationJob) bool {
		return j.GetState() == ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED
	})
	ts := j.GetPhaseTimings()
	if len(ts) != 3 || ts[0].GetBytesPerSecond() != 100<<20 || ts[1].GetBytesPerSecond() != 80<<20 || ts[2].GetEndTime() == nil {
		t.Fatalf("timings of the finished job: %v", ts)
	}
}
