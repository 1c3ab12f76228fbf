package bench

import (
	"cmp"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

const (
	sessionAgents = 200
	jobsPerAgent  = 5
	// cpuWindow is how long the coordinator's CPU is measured: one
	// checkpoint interval of the session manager (30 s), so the window
	// holds one checkpoint of every job and one refresh of every host.
	cpuWindow = 30 * time.Second
)

// BenchmarkAgentSessions200 runs a ferry-coordinator process (one node)
// with 200 agent sessions from load-generator goroutines in this process,
// each agent a KVM migration server with 5 jobs. Once all 1,000 jobs run,
// every agent sends progress of each of its jobs once a second and
// heartbeats at the Welcome interval; the coordinator's CPU (utime+stime
// from /proc) is measured over cpuWindow. Goal: under half a core.
func BenchmarkAgentSessions200(b *testing.B) {
	co := startCoordinator(b, buildBinaries(b))
	api := newAPI(co.dial(b))
	seedJobReferences(b, api)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := setParallelism(ctx, api, sessionAgents*jobsPerAgent); err != nil {
		b.Fatal(err)
	}
	agents, agentErrs := startAgents(ctx, b, co, sessionAgents)
	if err := createServersAndJobs(ctx, api, sessionAgents, jobsPerAgent); err != nil {
		b.Fatal(err)
	}
	want := sessionAgents * jobsPerAgent
	testkit.WaitFor(b, 3*time.Minute, fmt.Sprintf("%d jobs to run on their agents", want), func() bool {
		return totalAssigned(agents) >= int64(want)
	})
	time.Sleep(3 * time.Second) // let the start burst settle

	b.ResetTimer()
	sent0, applied0 := totalProgress(agents), appliedIndex(ctx, b, api)
	cores, err := cpuOver(ctx, co.pid(), cpuWindow)
	if err != nil {
		b.Fatal(err)
	}
	progressRate := float64(totalProgress(agents)-sent0) / cpuWindow.Seconds()
	writeRate := float64(appliedIndex(ctx, b, api)-applied0) / cpuWindow.Seconds()
	b.StopTimer()

	mem, err := memStatus(co.pid(), "VmRSS", "VmHWM")
	if err != nil {
		b.Fatal(err)
	}
	if err := agentErrs(); err != nil {
		b.Fatalf("an agent session failed during the run: %v", err)
	}
	running, err := countJobs(ctx, api, ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING)
	if err != nil || running != want || totalAssigned(agents) != int64(want) {
		b.Fatalf("after the run: %d jobs RUNNING (err %v), %d assignments received; want %d of each", running, err, totalAssigned(agents), want)
	}
	b.ReportMetric(cores, "coordinator-cores")
	b.ReportMetric(mem["VmRSS"], "coordinator-rss-MiB")
	b.ReportMetric(progressRate, "progress-msgs/s")
	b.ReportMetric(writeRate, "ledger-writes/s")
	verdict := "met"
	if cores >= 0.5 {
		verdict = "MISSED"
	}
	b.Logf("ferry-coordinator with %d agent sessions, %d running jobs, %.0f progress messages/s, %.1f ledger writes/s: "+
		"%.3f cores over %s, RSS %.1f MiB (peak %.1f MiB); goal < 0.5 cores %s",
		sessionAgents, running, progressRate, writeRate, cores, cpuWindow, mem["VmRSS"], mem["VmHWM"], verdict)
}

// appliedIndex is the Raft index the coordinator has applied.
func appliedIndex(ctx context.Context, b *testing.B, api *apiClients) uint64 {
	b.Helper()
	resp, err := api.members.ListMembers(ctx, &ferryv1.ListMembersRequest{})
	if err != nil {
		b.Fatal(err)
	}
	return resp.GetAppliedIndex()
}

// startAgents connects n fake agents, hosts agent-000 and on, each over
// its own mutual-TLS connection with the agent certificate, and waits
// until all are welcomed. The returned function reports the first session
// that failed. The agents stop when ctx ends.
func startAgents(ctx context.Context, b *testing.B, co *coordinator, n int) ([]*fakeAgent, func() error) {
	b.Helper()
	var (
		mu    sync.Mutex
		first error
		wg    sync.WaitGroup
	)
	ctx, cancel := context.WithCancel(ctx)
	agents := make([]*fakeAgent, n)
	for i := range agents {
		a := newFakeAgent(fmt.Sprintf("agent-%03d", i), 4<<40)
		agents[i] = a
		conn := co.dialAgent(b, fmt.Sprintf("agent-%03d", i))
		wg.Go(func() {
			if err := a.run(ctx, conn); err != nil {
				mu.Lock()
				first = cmp.Or(first, err)
				mu.Unlock()
			}
		})
	}
	b.Cleanup(func() { cancel(); wg.Wait() }) // before the connections close
	errs := func() error {
		mu.Lock()
		defer mu.Unlock()
		return first
	}
	for _, a := range agents {
		select {
		case <-a.welcomed:
		case <-time.After(time.Minute):
			b.Fatalf("%s not welcomed within a minute (first session error: %v)", a.host, errs())
		}
	}
	return agents, errs
}

// createServersAndJobs makes each agent's host a KVM migration server
// (migrationServers/s000 on hosts/agent-000, ...) and gives each server
// one CreateMigrationJobs batch of perServer VMs, eight calls at a time.
func createServersAndJobs(ctx context.Context, api *apiClients, servers, perServer int) error {
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for i := range servers {
		g.Go(func() error {
			server := fmt.Sprintf("migrationServers/s%03d", i)
			if err := createServer(ctx, api, server, fmt.Sprintf("hosts/agent-%03d", i)); err != nil {
				return err
			}
			if _, err := api.jobs.CreateMigrationJobs(ctx, jobsRequest(server, i*perServer, perServer)); err != nil {
				return fmt.Errorf("create jobs on %s: %w", server, err)
			}
			return nil
		})
	}
	return g.Wait()
}

func totalAssigned(agents []*fakeAgent) int64 {
	var n int64
	for _, a := range agents {
		n += a.assigned.Load()
	}
	return n
}

func totalProgress(agents []*fakeAgent) int64 {
	var n int64
	for _, a := range agents {
		n += a.progressSent.Load()
	}
	return n
}
