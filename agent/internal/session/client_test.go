package session

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ferry-v2v/ferry/pkg/grpcutil"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// fakeCoordinator is a scripted AgentService: a follower names the
// leader; a leader welcomes, optionally assigns, and records messages.
type fakeCoordinator struct {
	agentv1.UnimplementedAgentServiceServer
	leader     string // address of the leader, when this one follows
	graceMs    int64
	beatGrace  atomic.Int64 // grace period in heartbeats, in ms (0: none)
	assign     *agentv1.Assignment
	inventory  *agentv1.InventoryRequest
	hellos     chan *agentv1.Hello
	messages   chan *agentv1.ConnectRequest
	addr       string
	srv        *grpc.Server
	stopServer sync.Once
}

func startCoordinator(t *testing.T, lis net.Listener, fc *fakeCoordinator) *fakeCoordinator {
	t.Helper()
	if lis == nil {
		var err error
		if lis, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
	}
	fc.addr = lis.Addr().String()
	fc.hellos = make(chan *agentv1.Hello, 8)
	fc.messages = make(chan *agentv1.ConnectRequest, 64)
	fc.srv = grpc.NewServer()
	agentv1.RegisterAgentServiceServer(fc.srv, fc)
	done := make(chan struct{})
	go func() { defer close(done); _ = fc.srv.Serve(lis) }()
	t.Cleanup(func() { fc.stop(); <-done })
	return fc
}

func (fc *fakeCoordinator) stop() { fc.stopServer.Do(fc.srv.Stop) }

func (fc *fakeCoordinator) Connect(stream agentv1.AgentService_ConnectServer) error {
	if fc.leader != "" {
		return grpcutil.NotLeaderError(fc.leader)
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	fc.hellos <- first.GetHello()
	w := &agentv1.Welcome{CoordinatorId: fc.addr, HeartbeatIntervalMs: 50, GracePeriodMs: fc.graceMs}
	if err := stream.Send(&agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_Welcome{Welcome: w}}); err != nil {
		return err
	}
	if fc.assign != nil {
		if err := stream.Send(&agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_Assignment{Assignment: fc.assign}}); err != nil {
			return err
		}
	}
	if fc.inventory != nil {
		if err := stream.Send(&agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_InventoryRequest{InventoryRequest: fc.inventory}}); err != nil {
			return err
		}
	}
	stopBeats := make(chan struct{})
	var beats sync.WaitGroup
	defer func() { close(stopBeats); beats.Wait() }()
	beats.Add(1)
	go func() {
		defer beats.Done()
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stopBeats:
				return
			case <-t.C:
				_ = stream.Send(&agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_Heartbeat{Heartbeat: &agentv1.Heartbeat{
					GracePeriodMs: fc.beatGrace.Load()}}})
			}
		}
	}()
	for {
		msg, err := stream.Recv()
		if err != nil {
			return err
		}
		select {
		case fc.messages <- msg:
		default:
		}
	}
}

// fakeRunner records what the session asks of it.
type fakeRunner struct {
	mu      sync.Mutex
	held    []*agentv1.HeldJob
	started []*agentv1.Assignment
	stops   []string
	outbox  *Outbox
}

func (r *fakeRunner) Start(a *agentv1.Assignment) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.started = append(r.started, a)
	r.held = append(r.held, &agentv1.HeldJob{Job: a.GetJob().GetName(), Epoch: a.GetEpoch()})
	r.outbox.Progress(&agentv1.JobProgress{Job: a.GetJob().GetName(), Epoch: a.GetEpoch()})
	return nil
}

func (r *fakeRunner) Cancel(string, int64, string) bool { return false }

func (r *fakeRunner) Cutover(string, int64, time.Time) bool { return false }

func (r *fakeRunner) SetLimits(*agentv1.BandwidthLimits) {}

func (r *fakeRunner) StopAll(reason string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stops = append(r.stops, reason)
	return len(r.held)
}

func (r *fakeRunner) Inventory(_ context.Context, req *agentv1.InventoryRequest) (*ferryv1.SourceInventory, error) {
	return &ferryv1.SourceInventory{Vms: []*ferryv1.SourceVm{{Id: req.GetSource().GetName() + "/vm1"}}}, nil
}

func (r *fakeRunner) Held() []*agentv1.HeldJob {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*agentv1.HeldJob(nil), r.held...)
}

type staticFacts struct{}

func (staticFacts) Collect(context.Context) *ferryv1.HostFacts { return &ferryv1.HostFacts{Cpus: 2} }
func (staticFacts) SetStoragePaths([]string) bool              { return false }

func runClient(t *testing.T, addrs ...string) (*Client, *fakeRunner) {
	t.Helper()
	outbox := NewOutbox()
	r := &fakeRunner{outbox: outbox}
	c := New(Config{Coordinators: addrs, HostName: "h1", Credentials: insecure.NewCredentials(),
		BackoffMin: 20 * time.Millisecond, BackoffMax: 100 * time.Millisecond},
		Deps{Runner: r, Facts: staticFacts{}, Outbox: outbox, Logger: slog.New(slog.DiscardHandler)})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return c, r
}

func nextHello(t *testing.T, fc *fakeCoordinator) *agentv1.Hello {
	t.Helper()
	select {
	case h := <-fc.hellos:
		return h
	case <-time.After(5 * time.Second):
		t.Fatalf("no hello at %s within 5s", fc.addr)
	}
	return nil
}

func TestFollowsLeaderAndReconnectsWithHeldJobs(t *testing.T) {
	leader := startCoordinator(t, nil, &fakeCoordinator{graceMs: 60000,
		assign: &agentv1.Assignment{Job: &ferryv1.MigrationJob{Name: "migrationJobs/a"}, Epoch: 4}})
	follower := startCoordinator(t, nil, &fakeCoordinator{leader: leader.addr})
	c, r := runClient(t, follower.addr)

	if h := nextHello(t, leader); h.GetHostName() != "h1" || h.GetFacts().GetCpus() != 2 || len(h.GetHeldJobs()) != 0 {
		t.Fatalf("hello = %v", h)
	}
	waitUntil(t, "session on the leader", func() bool { return c.Coordinator() == leader.addr })
	waitUntil(t, "progress of the assigned job", func() bool {
		select {
		case m := <-leader.messages:
			return m.GetProgress().GetJob() == "migrationJobs/a"
		default:
			return false
		}
	})

	// The leader goes away; a new one takes over at the follower's address.
	leader.stop()
	follower.stop()
	lis, err := net.Listen("tcp", follower.addr)
	if err != nil {
		t.Fatal(err)
	}
	next := startCoordinator(t, lis, &fakeCoordinator{graceMs: 60000})
	h := nextHello(t, next)
	if len(h.GetHeldJobs()) != 1 || h.GetHeldJobs()[0].GetJob() != "migrationJobs/a" || h.GetHeldJobs()[0].GetEpoch() != 4 {
		t.Fatalf("hello after reconnect holds %v", h.GetHeldJobs())
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.stops) != 0 {
		t.Fatalf("jobs stopped within the grace period: %v", r.stops)
	}
}

func TestAnswersInventoryRequests(t *testing.T) {
	leader := startCoordinator(t, nil, &fakeCoordinator{graceMs: 60000,
		inventory: &agentv1.InventoryRequest{RequestId: "r1", Source: &ferryv1.Source{Name: "sources/s"}}})
	runClient(t, leader.addr)
	nextHello(t, leader)
	waitUntil(t, "inventory answer", func() bool {
		select {
		case m := <-leader.messages:
			r := m.GetInventoryResponse()
			vms := r.GetInventory().GetVms()
			return r.GetRequestId() == "r1" && len(vms) == 1 && vms[0].GetId() == "sources/s/vm1"
		default:
			return false
		}
	})
}

func TestCutOffPastGraceStopsJobs(t *testing.T) {
	leader := startCoordinator(t, nil, &fakeCoordinator{graceMs: 200})
	c, r := runClient(t, leader.addr)
	nextHello(t, leader)
	waitUntil(t, "session open", func() bool { return c.Coordinator() == leader.addr })
	leader.stop()
	waitUntil(t, "jobs stopped", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.stops) == 1 && strings.Contains(r.stops[0], "grace period")
	})
}

// TestGraceFromHeartbeats: the grace period lowered after the Welcome
// reaches the agent in heartbeats, and the agent cut off afterwards stops
// its jobs after the new one, not the Welcome's ten minutes.
func TestGraceFromHeartbeats(t *testing.T) {
	leader := startCoordinator(t, nil, &fakeCoordinator{graceMs: (10 * time.Minute).Milliseconds()})
	c, r := runClient(t, leader.addr)
	nextHello(t, leader)
	waitUntil(t, "session open", func() bool { return c.Coordinator() == leader.addr })
	leader.beatGrace.Store(200)
	waitUntil(t, "the new grace period adopted", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.grace == 200*time.Millisecond
	})
	leader.stop()
	waitUntil(t, "jobs stopped", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.stops) == 1 && strings.Contains(r.stops[0], "grace period of 200ms")
	})
}

func TestOutboxKeepsLatestProgressAndEveryResult(t *testing.T) {
	o := NewOutbox()
	o.Progress(&agentv1.JobProgress{Job: "a", Phase: ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONVERTING})
	o.Progress(&agentv1.JobProgress{Job: "a", Phase: ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_UPLOADING})
	o.Progress(&agentv1.JobProgress{Job: "b"})
	o.Result(&agentv1.JobResult{Job: "b", Epoch: 2})
	msgs := o.take()
	if len(msgs) != 3 || msgs[2].GetResult().GetJob() != "b" {
		t.Fatalf("take = %v", msgs)
	}
	if p := msgs[0].GetProgress(); p.GetJob() == "a" && p.GetPhase() != ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_UPLOADING {
		t.Fatalf("take = %v", msgs)
	}
	o.putBack(msgs)
	if held := o.held(); len(held) != 1 || held[0].GetJob() != "b" || held[0].GetEpoch() != 2 {
		t.Fatalf("held = %v", held)
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
