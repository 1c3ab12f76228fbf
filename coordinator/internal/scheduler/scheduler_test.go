package scheduler

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferry-v2v/ferry/coordinator/internal/fsm"
	"github.com/ferry-v2v/ferry/coordinator/internal/leader"
	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	"github.com/ferry-v2v/ferry/coordinator/internal/watch"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

const gib = int64(1) << 30

// memRaft applies to a real FSM and counts waiting-reason writes.
type memRaft struct {
	fsm     *fsm.FSM
	leader  chan bool
	mu      sync.Mutex
	reasons int
}

func (r *memRaft) Propose(_ context.Context, cmd *ledgerv1.Command) (fsm.Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if b := cmd.GetBatch(); b != nil {
		r.reasons += len(b.GetCommands())
	}
	names, err := r.fsm.ApplyCommand(cmd)
	return fsm.Result{Names: names, Err: err}, err
}

func (r *memRaft) SubscribeLeadership() (<-chan bool, func()) { return r.leader, func() {} }

func (r *memRaft) Barrier(context.Context) error { return nil }

type fakeAgents struct {
	mu        sync.Mutex
	connected map[string]*ferryv1.HostFacts
	assigned  []*agentv1.Assignment
	badSource bool
}

func (a *fakeAgents) Connected(host string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	_, ok := a.connected[host]
	return ok
}

func (a *fakeAgents) Hosts() map[string]*ferryv1.HostFacts {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[string]*ferryv1.HostFacts{}
	for k, v := range a.connected {
		out[k] = v
	}
	return out
}

func (a *fakeAgents) Assignment(j *ferryv1.MigrationJob, epoch int64) (*agentv1.Assignment, error) {
	if a.badSource {
		return nil, errors.New("source sources/s: not found")
	}
	return &agentv1.Assignment{Job: j, Epoch: epoch}, nil
}

func (a *fakeAgents) Assign(_ context.Context, host string, as *agentv1.Assignment) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.connected[host]; !ok {
		return errors.New("not connected")
	}
	a.assigned = append(a.assigned, as)
	return nil
}

type env struct {
	t      *testing.T
	ledger *ledger.Ledger
	raft   *memRaft
	agents *fakeAgents
	sched  *Scheduler
	hub    *watch.Hub
	clock  time.Time
}

func newEnv(t *testing.T, parallelism int32) *env {
	l := ledger.New()
	hub := watch.New(l.Job)
	l.SetObserver(hub.JobChanged)
	e := &env{t: t, ledger: l, hub: hub, raft: &memRaft{fsm: fsm.New(l, nil), leader: make(chan bool, 1)},
		agents: &fakeAgents{connected: map[string]*ferryv1.HostFacts{}}, clock: time.Unix(1_700_000_000, 0)}
	e.sched = New(Config{Interval: 20 * time.Millisecond}, Deps{Proposer: e.raft, Ledger: l, Hub: hub, Agents: e.agents})
	s := ledger.DefaultSettings()
	s.JobParallelism = parallelism
	e.apply(&ledgerv1.Command{Op: &ledgerv1.Command_PutSettings{PutSettings: &ledgerv1.PutSettings{Settings: s}}})
	e.apply(&ledgerv1.Command{Op: &ledgerv1.Command_PutCredential{PutCredential: &ledgerv1.PutCredential{
		Credential: &ledgerv1.SealedCredential{Credential: &ferryv1.Credential{Name: "credentials/c"}}}}})
	e.apply(&ledgerv1.Command{Op: &ledgerv1.Command_PutSource{PutSource: &ledgerv1.PutSource{
		Source: &ferryv1.Source{Name: "sources/s", Type: ferryv1.Platform_PLATFORM_KVM, Kvm: &ferryv1.KvmConnection{Credential: "credentials/c"}}}}})
	return e
}

func (e *env) apply(cmd *ledgerv1.Command) {
	e.t.Helper()
	e.clock = e.clock.Add(time.Second)
	cmd.Time = timestamppb.New(e.clock)
	if _, err := e.raft.fsm.ApplyCommand(cmd); err != nil {
		e.t.Fatalf("apply %T: %v", cmd.GetOp(), err)
	}
}

func (e *env) server(name, host string, enabled bool) {
	e.apply(&ledgerv1.Command{Op: &ledgerv1.Command_PutMigrationServer{PutMigrationServer: &ledgerv1.PutMigrationServer{
		MigrationServer: &ferryv1.MigrationServer{Name: name, Host: host, Type: ferryv1.Platform_PLATFORM_KVM, Enabled: enabled,
			CachePath: cachePath(host)}}}})
}

func (e *env) job(name, server string, size int64) {
	e.apply(&ledgerv1.Command{Op: &ledgerv1.Command_CreateMigrationJobs{CreateMigrationJobs: &ledgerv1.CreateMigrationJobs{
		Jobs: []*ferryv1.MigrationJob{{Name: name, Source: "sources/s", MigrationServer: server,
			Target: &ferryv1.TargetVm{Disks: []*ferryv1.TargetDisk{{SizeBytes: size}}}}}}}})
}

// cachePath is the cache_path of the servers on host.
func cachePath(host string) string { return "/srv/cache-" + strings.TrimPrefix(host, "hosts/") }

// connect reports host connected with free bytes at its servers' cache
// path; the agent's own --cache-path disk has plenty, which must not count.
func (e *env) connect(host string, free int64) {
	e.agents.mu.Lock()
	defer e.agents.mu.Unlock()
	e.agents.connected[host] = &ferryv1.HostFacts{CacheTotalBytes: 100 * gib, CacheFreeBytes: 100 * gib,
		Storages: []*ferryv1.StorageSpace{{Path: cachePath(host), TotalBytes: 100 * gib, FreeBytes: free}}}
}

func (e *env) get(name string) *ferryv1.MigrationJob {
	j, ok := e.ledger.Job(name)
	if !ok {
		e.t.Fatalf("no job %s", name)
	}
	return j
}

func TestSchedulerStartsAndExplainsWaits(t *testing.T) {
	e := newEnv(t, 2)
	e.server("migrationServers/a", "hosts/a", true)
	e.server("migrationServers/off", "hosts/c", false)
	e.server("migrationServers/b", "b", true) // host named without prefix
	e.connect("hosts/a", 5*gib)
	e.connect("hosts/c", 5*gib)
	e.job("migrationJobs/1", "migrationServers/a", 3*gib)
	e.job("migrationJobs/2", "migrationServers/a", 2*gib+gib/5)
	e.job("migrationJobs/3", "migrationServers/off", gib)
	e.job("migrationJobs/4", "migrationServers/b", gib)
	e.job("migrationJobs/5", "migrationServers/a", gib) // fits beside job 1: no head-of-line blocking
	e.job("migrationJobs/6", "migrationServers/a", gib)
	// The first pass judged job 2 before job 5 took its share of the cache;
	// the second one tells the current reason.
	e.sched.pass(context.Background())
	e.sched.pass(context.Background())

	want := map[string]string{
		"migrationJobs/2": "cache /srv/cache-a on hosts/a has 1 GiB free, job needs 2.2 GiB",
		"migrationJobs/3": "migration server migrationServers/off is disabled",
		"migrationJobs/4": "host hosts/b is not connected",
		"migrationJobs/6": "job parallelism 2 reached",
	}
	for name, reason := range want {
		if j := e.get(name); j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_QUEUED || j.GetWaitingReason() != reason {
			t.Errorf("%s: %s %q, want QUEUED %q", name, j.GetState(), j.GetWaitingReason(), reason)
		}
	}
	for _, name := range []string{"migrationJobs/1", "migrationJobs/5"} {
		if j := e.get(name); j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING || j.GetEpoch() != 1 || j.GetAssignedHost() != "hosts/a" {
			t.Errorf("%s = %v, want RUNNING epoch 1 on hosts/a", name, j)
		}
	}
	if len(e.agents.assigned) != 2 || e.agents.assigned[0].GetEpoch() != 1 {
		t.Fatalf("assigned = %v", e.agents.assigned)
	}

	// Nothing changed: no waiting reason is written again.
	before := e.raft.reasons
	e.sched.pass(context.Background())
	if e.raft.reasons != before {
		t.Errorf("a pass with nothing new wrote %d waiting reasons", e.raft.reasons-before)
	}
}

func TestSchedulerFailsJobWhoseAssignmentCannotBePrepared(t *testing.T) {
	e := newEnv(t, 10)
	e.server("migrationServers/a", "hosts/a", true)
	e.connect("hosts/a", 5*gib)
	e.job("migrationJobs/1", "migrationServers/a", gib)
	e.agents.badSource = true
	e.sched.pass(context.Background())
	if j := e.get("migrationJobs/1"); j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED {
		t.Fatalf("job = %v, want FAILED", j)
	}
}

func TestSchedulerRunsOnlyWhileLeader(t *testing.T) {
	e := newEnv(t, 10)
	e.server("migrationServers/a", "hosts/a", true)
	e.connect("hosts/a", 5*gib)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { leader.Run(ctx, e.raft, nil, e.sched); done <- nil }()
	defer func() { cancel(); <-done }()

	e.raft.leader <- false
	e.job("migrationJobs/1", "migrationServers/a", gib)
	time.Sleep(100 * time.Millisecond) // several ticks as a follower
	if j := e.get("migrationJobs/1"); j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_QUEUED {
		t.Fatalf("a follower started %v", j)
	}
	e.raft.leader <- true
	deadline := time.Now().Add(5 * time.Second)
	for e.get("migrationJobs/1").GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING {
		if time.Now().After(deadline) {
			t.Fatal("the leader did not start the job")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSchedulerMeasuresTheServersCachePath: admission reads the free space
// of the migration server's cache_path, where jobs write, not of the
// agent's --cache-path; a host that does not report it yet holds the job.
func TestSchedulerMeasuresTheServersCachePath(t *testing.T) {
	e := newEnv(t, 10)
	e.server("migrationServers/a", "hosts/a", true)
	e.agents.mu.Lock()
	e.agents.connected["hosts/a"] = &ferryv1.HostFacts{CacheTotalBytes: 100 * gib, CacheFreeBytes: 100 * gib}
	e.agents.mu.Unlock()
	e.job("migrationJobs/1", "migrationServers/a", gib)
	e.sched.pass(context.Background())
	want := "host hosts/a does not report the free space of cache path /srv/cache-a of migrationServers/a yet " +
		"(its agent measures it a heartbeat after it learns the path)"
	if j := e.get("migrationJobs/1"); j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_QUEUED || j.GetWaitingReason() != want {
		t.Fatalf("job = %s %q, want QUEUED %q", j.GetState(), j.GetWaitingReason(), want)
	}

	e.connect("hosts/a", gib/2) // the --cache-path disk still has 100 GiB free
	e.sched.pass(context.Background())
	want = "cache /srv/cache-a on hosts/a has 512 MiB free, job needs 1 GiB"
	if j := e.get("migrationJobs/1"); j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_QUEUED || j.GetWaitingReason() != want {
		t.Fatalf("job = %s %q, want QUEUED %q", j.GetState(), j.GetWaitingReason(), want)
	}

	e.connect("hosts/a", 2*gib)
	e.sched.pass(context.Background())
	if j := e.get("migrationJobs/1"); j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING {
		t.Fatalf("job = %s %q, want RUNNING", j.GetState(), j.GetWaitingReason())
	}
}

// TestSchedulerWaitsForTheTargetHost: a job whose VM is placed on another
// host starts only while that host's agent is connected; one placed on the
// server's own host does not wait for anything more.
func TestSchedulerWaitsForTheTargetHost(t *testing.T) {
	e := newEnv(t, 10)
	e.server("migrationServers/a", "hosts/a", true)
	e.connect("hosts/a", 5*gib)
	place := func(name, host string) {
		e.apply(&ledgerv1.Command{Op: &ledgerv1.Command_CreateMigrationJobs{CreateMigrationJobs: &ledgerv1.CreateMigrationJobs{
			Jobs: []*ferryv1.MigrationJob{{Name: name, Source: "sources/s", MigrationServer: "migrationServers/a", TargetHost: host,
				Target: &ferryv1.TargetVm{Disks: []*ferryv1.TargetDisk{{SizeBytes: gib}}}}}}}})
	}
	place("migrationJobs/away", "hosts/h2")
	place("migrationJobs/home", "hosts/a")
	e.sched.pass(context.Background())
	if j := e.get("migrationJobs/away"); j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_QUEUED ||
		j.GetWaitingReason() != "target host hosts/h2 is not connected" {
		t.Fatalf("job placed on a disconnected host: %s %q", j.GetState(), j.GetWaitingReason())
	}
	if j := e.get("migrationJobs/home"); j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING {
		t.Fatalf("job placed on the server's host: %s %q", j.GetState(), j.GetWaitingReason())
	}
	e.connect("hosts/h2", 0)
	e.sched.pass(context.Background())
	if j := e.get("migrationJobs/away"); j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING || j.GetAssignedHost() != "hosts/a" {
		t.Fatalf("once hosts/h2 is back: %v", j)
	}
}
