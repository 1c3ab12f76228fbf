package session_test

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/ferry-v2v/ferry/agent/agenttest"
	"github.com/ferry-v2v/ferry/coordinator/internal/session"
	"github.com/ferry-v2v/ferry/coordinator/internal/testcluster"
	"github.com/ferry-v2v/ferry/pkg/client"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

const (
	stateRunning   = ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING
	stateSucceeded = ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED
	stateFailed    = ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED
)

// clusterEnv is what the steps of TestAgentSessionsOnACluster share.
type clusterEnv struct {
	c      *testcluster.Cluster
	cl     *client.Client
	gates  *gates
	agent  *agenttest.Agent
	leader *testcluster.Node
}

// TestAgentSessionsOnACluster runs three real coordinators (Raft on
// raft-boltdb, gRPC with mutual TLS, on loopback) and the real agent with
// a test-only copier, through the life of agent sessions. The steps share
// the cluster and run in order.
func TestAgentSessionsOnACluster(t *testing.T) {
	if testing.Short() {
		t.Skip("three-node cluster")
	}
	c := testcluster.Start(t, 3)
	e := &clusterEnv{c: c, cl: apiClient(t, c), gates: &gates{m: map[string]chan struct{}{}}, leader: c.Leader(10 * time.Second)}

	// An agent pointed at a follower ends up on the leader.
	e.agent = agenttest.Start(t, agenttest.Options{Coordinators: []string{c.Followers()[0].Addr()}, HostName: "kvm1", Cluster: "c1",
		Credentials: c.AgentCredentials("kvm1"), Copy: e.gates.copier(), CacheTotal: 100 * gib, CacheFree: 50 * gib, Logger: c.Log})
	testcluster.Eventually(t, 10*time.Second, "the agent holds a session with the leader", func() bool {
		return e.agent.Coordinator() == e.leader.Addr()
	})
	seed(t, e.cl)
	createServer(t, e.cl, "migrationServers/kvm1", "hosts/kvm1")

	t.Run("job runs to SUCCEEDED with live progress", e.jobSucceedsWithProgress)
	t.Run("killing the leader re-attaches the agent, which reports its held job", e.leaderKilled)
	t.Run("a result under a stale epoch is ignored", e.staleEpochIgnored)
	t.Run("an agent gone past the grace period has its jobs failed", e.agentLost)
}

func (e *clusterEnv) jobSucceedsWithProgress(t *testing.T) {
	watch, err := e.cl.Jobs().WatchMigrationJobs(testcluster.Ctx(t, 20*time.Second), &ferryv1.WatchMigrationJobsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	job := createJob(t, e.cl, "migrationServers/kvm1", "vm-a")
	sawProgress := false
	for {
		ev, err := watch.Recv()
		if err != nil {
			t.Fatalf("watch: %v (progress seen: %v)", err, sawProgress)
		}
		if ev.GetJob().GetName() != job {
			continue
		}
		if ev.GetType() == ferryv1.WatchEventType_WATCH_EVENT_TYPE_PROGRESS && ev.GetJob().GetDisks()[0].GetDoneBytes() > 0 {
			sawProgress = true
		}
		if ev.GetJob().GetState() == stateSucceeded {
			break
		}
	}
	if !sawProgress {
		t.Fatal("no live progress with bytes done before the job succeeded")
	}
	if j := getJob(t, e.cl, job); j.GetEpoch() != 1 || j.GetAssignedHost() != "hosts/kvm1" || j.GetDisks()[0].GetDoneBytes() != 1<<20 ||
		j.GetPhase() != ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONFIGURING {
		t.Fatalf("finished job = %v", j)
	}
}

func (e *clusterEnv) leaderKilled(t *testing.T) {
	job := createJob(t, e.cl, "migrationServers/kvm1", "vm-b")
	e.gates.hold(job)
	defer e.gates.release(job)
	testcluster.Eventually(t, 10*time.Second, "the agent runs "+job, func() bool { return len(e.agent.Held()) == 1 })

	e.c.Kill(e.leader)
	killed := time.Now()
	next := e.c.Leader(10 * time.Second)
	testcluster.Eventually(t, 10*time.Second, "the agent is on the new leader", func() bool {
		return e.agent.Coordinator() == next.Addr()
	})
	t.Logf("agent re-attached %v after the leader was killed", time.Since(killed).Round(time.Millisecond))
	if !helloHeld(e.agent.Hellos(), next.Addr(), job, 1) {
		t.Fatalf("no hello to %s reporting %s under epoch 1: %v", next.Addr(), job, e.agent.Hellos())
	}
	e.gates.release(job)
	j := waitState(t, e.cl, job, stateSucceeded)
	if j.GetEpoch() != 1 || j.GetAttempt() != 1 {
		t.Fatalf("the job was run again: %v", j)
	}
	e.leader = next
}

func (e *clusterEnv) staleEpochIgnored(t *testing.T) {
	// The raw agent reports the free space of the server's cache path
	// ahead of time: it answers no heartbeat with fresh facts.
	cachePath := t.TempDir()
	raw := startRawAgent(t, e.c.DialAgent(e.leader.Addr(), "kvm2"), &agentv1.Hello{HostName: "kvm2",
		Facts: &ferryv1.HostFacts{Storages: []*ferryv1.StorageSpace{{Path: cachePath, TotalBytes: 10 * gib, FreeBytes: 10 * gib}}}})
	if raw.next().GetWelcome() == nil {
		t.Fatal("no welcome")
	}
	createServerAt(t, e.cl, "migrationServers/kvm2", "hosts/kvm2", cachePath)
	job := createJob(t, e.cl, "migrationServers/kvm2", "vm-c")
	a := raw.next().GetAssignment()
	if a.GetJob().GetName() != job || a.GetEpoch() != 1 || a.GetSecrets()["credentials/pw"] != "s3cret" {
		t.Fatalf("assignment: job %s epoch %d secrets %d", a.GetJob().GetName(), a.GetEpoch(), len(a.GetSecrets()))
	}
	raw.send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Result{Result: &agentv1.JobResult{
		Job: job, Epoch: 0, Outcome: agentv1.JobOutcome_JOB_OUTCOME_FAILED, Reason: "from a superseded assignment"}}})
	// Messages of a session are handled in order: once this progress is
	// checkpointed, the stale result has been handled too.
	raw.send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Progress{Progress: &agentv1.JobProgress{
		Job: job, Epoch: 1, Phase: ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_UPLOADING}}})
	testcluster.Eventually(t, 10*time.Second, "the phase change is checkpointed", func() bool {
		return getJob(t, e.cl, job).GetPhase() == ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_UPLOADING
	})
	if j := getJob(t, e.cl, job); j.GetState() != stateRunning || j.GetEpoch() != 1 || j.GetReason() != "" {
		t.Fatalf("the stale result changed the job: %v", j)
	}
	raw.send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Result{Result: &agentv1.JobResult{
		Job: job, Epoch: 1, Outcome: agentv1.JobOutcome_JOB_OUTCOME_SUCCEEDED}}})
	waitState(t, e.cl, job, stateSucceeded)
}

func (e *clusterEnv) agentLost(t *testing.T) {
	_, err := e.cl.Settings().UpdateSettings(testcluster.Ctx(t, 10*time.Second), &ferryv1.UpdateSettingsRequest{
		Settings:   &ferryv1.Settings{AgentGracePeriod: durationpb.New(time.Second)},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"agent_grace_period"}}})
	if err != nil {
		t.Fatal(err)
	}
	job := createJob(t, e.cl, "migrationServers/kvm1", "vm-d")
	e.gates.hold(job)
	defer e.gates.release(job)
	waitState(t, e.cl, job, stateRunning)
	e.agent.Stop()
	j := waitState(t, e.cl, job, stateFailed)
	if !strings.HasPrefix(j.GetReason(), session.ReasonAgentLost) {
		t.Fatalf("reason = %q, want it to start with %q", j.GetReason(), session.ReasonAgentLost)
	}
}

func helloHeld(hellos []agenttest.SentHello, target, job string, epoch int64) bool {
	for _, h := range hellos {
		if h.Target != target {
			continue
		}
		for _, held := range h.Hello.GetHeldJobs() {
			if held.GetJob() == job && held.GetEpoch() == epoch {
				return true
			}
		}
	}
	return false
}
