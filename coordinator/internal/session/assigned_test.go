package session

import (
	"testing"

	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// TestReportsOnlyFromTheAssignedHost: progress and a result (with phase
// timings) and a fence check for a job running on h1, sent by a session of
// h2, change nothing: the job keeps its phase, disks, timings and state,
// the fence says the assignment is not h2's, and no live progress is
// published.
func TestReportsOnlyFromTheAssignedHost(t *testing.T) {
	f := newFixture(t, Config{}, true)
	job := f.seedJob("hosts/h1", 1<<20)
	f.start(job, "hosts/h1", 1)
	owner := f.connect(hello("h1", &agentv1.HeldJob{Job: job, Epoch: 1}))
	owner.next()
	intruder := f.connect(hello("h2"))
	intruder.next()
	before, _ := f.ledger.Job(job)

	timings := []*ferryv1.PhaseTiming{{Phase: ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONVERTING, StartTime: timestamppb.Now()}}
	intruder.send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Progress{Progress: &agentv1.JobProgress{
		Job: job, Epoch: 1, Phase: ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONFIGURING, PhaseTimings: timings,
		Disks: []*ferryv1.DiskProgress{{SourceDisk: "vda", DoneBytes: 1 << 20, TotalBytes: 1 << 20, Verified: true}}}}})
	intruder.send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Result{Result: &agentv1.JobResult{
		Job: job, Epoch: 1, Outcome: agentv1.JobOutcome_JOB_OUTCOME_SUCCEEDED, PhaseTimings: timings}}})
	intruder.send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_FenceCheck{FenceCheck: &agentv1.FenceCheck{
		RequestId: "f1", Job: job, Epoch: 1}}})
	ans := intruder.next().GetFenceAnswer()
	if ans.GetCurrent() || ans.GetRequestId() != "f1" {
		t.Fatalf("fence answer to h2 for h1's job: %v", ans)
	}
	// The session handles messages in order: the progress and result were
	// handled before the fence answer was sent.
	after, _ := f.ledger.Job(job)
	if after.GetState() != before.GetState() || after.GetPhase() != before.GetPhase() || len(after.GetDisks()) != len(before.GetDisks()) ||
		len(after.GetPhaseTimings()) != 0 {
		t.Fatalf("h2's reports changed h1's job: before %v, after %v", before, after)
	}
	if after.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING {
		t.Fatalf("job state %v, want RUNNING", after.GetState())
	}
	if live := f.hub.Overlay(after); len(live.GetDisks()) != len(before.GetDisks()) {
		t.Fatalf("h2's progress was published: %v", live.GetDisks())
	}
}
