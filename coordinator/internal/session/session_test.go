package session

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"

	"github.com/ferry-v2v/ferry/pkg/grpcutil"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

const (
	phaseConverting = ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONVERTING
	phaseUploading  = ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_UPLOADING
)

func TestFollowerSendsAgentToLeader(t *testing.T) {
	f := newFixture(t, Config{}, false)
	a := f.connect(hello("h1"))
	err := a.ended()
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("code = %v, want UNAVAILABLE: %v", status.Code(err), err)
	}
	if addr, ok := grpcutil.LeaderFromError(err); !ok || addr != "leader.example:7443" {
		t.Fatalf("leader = %q, %v; want leader.example:7443", addr, ok)
	}
}

func TestFirstMessageMustBeHello(t *testing.T) {
	f := newFixture(t, Config{}, true)
	a := f.connect(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Heartbeat{Heartbeat: &agentv1.Heartbeat{}}})
	if err := a.ended(); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("code = %v, want INVALID_ARGUMENT: %v", status.Code(err), err)
	}
}

func TestHelloRecordsHostAndDisconnectClearsIt(t *testing.T) {
	f := newFixture(t, Config{HeartbeatInterval: 100 * time.Millisecond}, true)
	f.setGrace(42 * time.Second)
	a := f.connect(hello("h1"))
	w := a.next().GetWelcome()
	if w.GetHeartbeatIntervalMs() != 100 || w.GetGracePeriodMs() != 42000 {
		t.Fatalf("welcome = %v", w)
	}
	h, ok := f.ledger.Host("hosts/h1")
	if !ok || !h.GetConnected() || h.GetFacts().GetCpus() != 4 || h.GetAgentVersion() != "test" {
		t.Fatalf("host = %v", h)
	}
	testkit.WaitFor(t, 5*time.Second, "h1 connected with its facts", func() bool {
		return f.mgr.Connected("hosts/h1") && f.mgr.Hosts()["hosts/h1"].GetCacheFreeBytes() == 10<<30
	})
	a.cancel()
	testkit.WaitFor(t, 5*time.Second, "host marked disconnected", func() bool {
		h, _ := f.ledger.Host("hosts/h1")
		return !h.GetConnected() && !f.mgr.Connected("h1")
	})
}

func TestSilentAgentIsDropped(t *testing.T) {
	f := newFixture(t, Config{HeartbeatInterval: 50 * time.Millisecond}, true)
	a := f.connect(hello("h1"))
	a.next() // welcome; then say nothing more
	if err := a.ended(); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("code = %v, want DEADLINE_EXCEEDED: %v", status.Code(err), err)
	}
}

func TestProgressResultAndStaleEpoch(t *testing.T) {
	f := newFixture(t, Config{}, true)
	job := f.seedJob("hosts/h1", 1<<30)
	f.start(job, "hosts/h1", 1)
	events, stop := f.hub.Subscribe(16)
	defer stop()

	a := f.connect(hello("h1", &agentv1.HeldJob{Job: job, Epoch: 1, Phase: phaseConverting}))
	a.next() // welcome
	disks := []*ferryv1.DiskProgress{{SourceDisk: "vda", TotalBytes: 1 << 30, DoneBytes: 1 << 29}}
	a.send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Progress{Progress: &agentv1.JobProgress{
		Job: job, Epoch: 1, Phase: phaseUploading, Disks: disks}}})
	testkit.WaitFor(t, 5*time.Second, "checkpoint of the phase change", func() bool {
		j, _ := f.ledger.Job(job)
		return j.GetPhase() == phaseUploading && len(j.GetDisks()) == 1
	})
	sawProgress := false
	for !sawProgress {
		select {
		case ev := <-events:
			sawProgress = ev.Type == ferryv1.WatchEventType_WATCH_EVENT_TYPE_PROGRESS && ev.Job.GetDisks()[0].GetDoneBytes() == 1<<29
		case <-time.After(5 * time.Second):
			t.Fatal("no progress event")
		}
	}

	// A result of an older assignment changes nothing.
	a.send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Result{Result: &agentv1.JobResult{
		Job: job, Epoch: 0, Outcome: agentv1.JobOutcome_JOB_OUTCOME_FAILED, Reason: "stale"}}})
	a.send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Result{Result: &agentv1.JobResult{
		Job: job, Epoch: 1, Outcome: agentv1.JobOutcome_JOB_OUTCOME_SUCCEEDED, Warnings: []string{"w"}}}})
	testkit.WaitFor(t, 5*time.Second, "job succeeded", func() bool {
		j, _ := f.ledger.Job(job)
		return j.GetState() == ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED
	})
	if j, _ := f.ledger.Job(job); j.GetReason() != "" || len(j.GetWarnings()) != 1 {
		t.Fatalf("job = %v, the stale result leaked into it", j)
	}
}

func TestHeldJobsAreReconciled(t *testing.T) {
	f := newFixture(t, Config{}, true)
	current := f.seedJob("hosts/h1", 1)
	f.start(current, "hosts/h1", 3)
	stale := f.seedJob("hosts/h1", 1)
	f.start(stale, "hosts/h1", 2)
	lost := f.seedJob("hosts/h1", 1) // running here, but the agent does not hold it
	f.start(lost, "hosts/h1", 1)

	a := f.connect(hello("h1",
		&agentv1.HeldJob{Job: current, Epoch: 3},
		&agentv1.HeldJob{Job: stale, Epoch: 1},
		&agentv1.HeldJob{Job: "migrationJobs/gone", Epoch: 7}))
	a.next() // welcome
	got := map[string]*agentv1.ConnectResponse{}
	for range 3 {
		msg := a.next()
		got[msg.GetCancellation().GetJob()+msg.GetAssignment().GetJob().GetName()] = msg
	}
	if c := got[stale].GetCancellation(); c.GetEpoch() != 1 || !strings.Contains(c.GetReason(), "superseded") {
		t.Errorf("stale job: %v", got[stale])
	}
	if c := got["migrationJobs/gone"].GetCancellation(); c.GetEpoch() != 7 {
		t.Errorf("unknown job: %v", got["migrationJobs/gone"])
	}
	as := got[lost].GetAssignment()
	if as.GetEpoch() != 1 || as.GetSecrets()["credentials/pw"] != "s3cret" || as.GetSource().GetName() != "sources/kvm1" ||
		as.GetMigrationServer().GetName() != "migrationServers/ms" {
		t.Errorf("lost job not assigned again with its source and secrets: %v", got[lost])
	}
	if _, ok := got[current]; ok {
		t.Errorf("the current job was disturbed: %v", got[current])
	}
}

func TestCancelledJobIsCancelledOnAgent(t *testing.T) {
	f := newFixture(t, Config{}, true)
	job := f.seedJob("hosts/h1", 1)
	a := f.connect(hello("h1"))
	a.next() // welcome
	f.start(job, "hosts/h1", 1)
	as, err := f.mgr.Assignment(mustJob(t, f, job), 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.mgr.Assign(context.Background(), "hosts/h1", as); err != nil {
		t.Fatal(err)
	}
	if a.next().GetAssignment().GetEpoch() != 1 {
		t.Fatal("no assignment")
	}
	f.apply(&ledgerv1.Command{Op: &ledgerv1.Command_CancelMigrationJob{CancelMigrationJob: &ledgerv1.CancelMigrationJob{Name: job, Reason: "operator"}}})
	// The hello's reconciliation may have sent the same assignment too.
	msg := a.next()
	for msg.GetAssignment().GetEpoch() == 1 {
		msg = a.next()
	}
	c := msg.GetCancellation()
	if c.GetJob() != job || c.GetEpoch() != 1 || c.GetReason() != "operator" {
		t.Fatalf("cancellation = %v", c)
	}
	if err := f.mgr.Assign(context.Background(), "hosts/nope", as); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("assign to an absent host: %v", err)
	}
}

func TestAgentLostAfterGracePeriod(t *testing.T) {
	f := newFixture(t, Config{SweepInterval: 20 * time.Millisecond}, true)
	f.setGrace(200 * time.Millisecond)
	job := f.seedJob("hosts/h1", 1)
	a := f.connect(hello("h1"))
	a.next()
	f.start(job, "hosts/h1", 1)
	time.Sleep(300 * time.Millisecond) // longer than the grace period, but connected
	if j := mustJob(t, f, job); j.GetState() != stateRunning {
		t.Fatalf("job of a connected agent failed: %v", j)
	}
	a.cancel()
	testkit.WaitFor(t, 5*time.Second, "job failed as agent lost", func() bool {
		j := mustJob(t, f, job)
		return j.GetState() == ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED && strings.HasPrefix(j.GetReason(), ReasonAgentLost)
	})
}

func TestLeadershipLossClosesSessions(t *testing.T) {
	f := newFixture(t, Config{}, true)
	a := f.connect(hello("h1"))
	a.next()
	f.raft.setLeader(false)
	err := a.ended()
	if addr, ok := grpcutil.LeaderFromError(err); !ok || addr != "leader.example:7443" {
		t.Fatalf("err = %v, want NOT_LEADER naming the leader", err)
	}
}

func mustJob(t *testing.T, f *fixture, name string) *ferryv1.MigrationJob {
	t.Helper()
	j, ok := f.ledger.Job(name)
	if !ok {
		t.Fatalf("no job %s", name)
	}
	return j
}

func TestAssignmentCarriesGuestShutdownTimeout(t *testing.T) {
	f := newFixture(t, Config{}, true)
	job := f.seedJob("hosts/h1", 1)
	f.start(job, "hosts/h1", 1)
	as, err := f.mgr.Assignment(mustJob(t, f, job), 1)
	if err != nil {
		t.Fatal(err)
	}
	if got := as.GetGuestShutdownTimeout().AsDuration(); got != ledger.DefaultGuestShutdownTimeout {
		t.Fatalf("guest shutdown timeout %v by default, want %v", got, ledger.DefaultGuestShutdownTimeout)
	}
	s := ledger.DefaultSettings()
	s.GuestShutdownTimeout = durationpb.New(90 * time.Second)
	f.apply(&ledgerv1.Command{Op: &ledgerv1.Command_PutSettings{PutSettings: &ledgerv1.PutSettings{Settings: s}}})
	if as, err = f.mgr.Assignment(mustJob(t, f, job), 2); err != nil {
		t.Fatal(err)
	}
	if got := as.GetGuestShutdownTimeout().AsDuration(); got != 90*time.Second {
		t.Fatalf("guest shutdown timeout %v, want the setting's 1m30s", got)
	}
}
