package session

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferry-v2v/ferry/coordinator/internal/fsm"
	leaderstep "github.com/ferry-v2v/ferry/coordinator/internal/leader"
	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	"github.com/ferry-v2v/ferry/coordinator/internal/watch"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/seal"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

var errTestNotLeader = errors.New("test: not the leader")

// memRaft applies commands straight to a real FSM: a one-node "cluster"
// whose leadership the test flips.
type memRaft struct {
	fsm *fsm.FSM

	mu     sync.Mutex
	leader bool
	subs   []chan bool
}

func (r *memRaft) Propose(_ context.Context, cmd *ledgerv1.Command) (fsm.Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.leader {
		return fsm.Result{}, errTestNotLeader
	}
	if cmd.GetTime() == nil {
		cmd.Time = timestamppb.Now()
	}
	names, err := r.fsm.ApplyCommand(cmd)
	return fsm.Result{Names: names, Err: err}, err
}

func (r *memRaft) IsLeader() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.leader
}

func (r *memRaft) LeaderAPIAddress() string { return "leader.example:7443" }

func (r *memRaft) Barrier(context.Context) error { return nil }

func (r *memRaft) SubscribeLeadership() (<-chan bool, func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ch := make(chan bool, 1)
	ch <- r.leader
	r.subs = append(r.subs, ch)
	return ch, func() {}
}

func (r *memRaft) setLeader(v bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.leader = v
	for _, ch := range r.subs {
		select {
		case <-ch:
		default:
		}
		ch <- v
	}
}

type fixture struct {
	t      *testing.T
	raft   *memRaft
	ledger *ledger.Ledger
	hub    *watch.Hub
	sealer *seal.Sealer
	mgr    *Manager
	conn   *grpc.ClientConn
}

// newFixture serves a manager over bufconn; leader says whether it leads.
func newFixture(t *testing.T, cfg Config, leader bool) *fixture {
	t.Helper()
	l := ledger.New()
	hub := watch.New(l.Job)
	l.SetObserver(hub.JobChanged)
	sealer, err := seal.New(make([]byte, 32))
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, raft: &memRaft{fsm: fsm.New(l, nil), leader: leader}, ledger: l, hub: hub, sealer: sealer}
	f.mgr = NewManager(cfg, Deps{Proposer: f.raft, Ledger: l, Hub: hub, Sealer: sealer, Logger: testkit.Logger(t)})

	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	agentv1.RegisterAgentServiceServer(srv, f.mgr)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	go func() { _ = srv.Serve(lis); done <- struct{}{} }()
	go func() {
		leaderstep.Run(ctx, f.raft, nil, f.mgr)
		f.mgr.Shutdown()
		done <- struct{}{}
	}()
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	f.conn = conn
	t.Cleanup(func() {
		conn.Close()
		cancel()
		srv.Stop()
		<-done
		<-done
	})
	return f
}

// apply writes a command as the leader would.
func (f *fixture) apply(op *ledgerv1.Command) {
	f.t.Helper()
	op.Time = timestamppb.Now()
	if _, err := f.raft.fsm.ApplyCommand(op); err != nil {
		f.t.Fatalf("apply %T: %v", op.GetOp(), err)
	}
}

// seedJob creates a migration server on host, a KVM source with a sealed
// credential, and one queued job; it returns the job's name.
func (f *fixture) seedJob(host string, diskBytes int64) string {
	f.t.Helper()
	sealed, err := f.sealer.Seal([]byte("s3cret"), []byte("credentials/pw"))
	if err != nil {
		f.t.Fatal(err)
	}
	if _, ok := f.ledger.MigrationServer("migrationServers/ms"); !ok {
		f.apply(&ledgerv1.Command{Op: &ledgerv1.Command_PutMigrationServer{PutMigrationServer: &ledgerv1.PutMigrationServer{
			MigrationServer: &ferryv1.MigrationServer{Name: "migrationServers/ms", Host: host, Type: ferryv1.Platform_PLATFORM_KVM, Enabled: true}}}})
		f.apply(&ledgerv1.Command{Op: &ledgerv1.Command_PutCredential{PutCredential: &ledgerv1.PutCredential{
			Credential: &ledgerv1.SealedCredential{Credential: &ferryv1.Credential{Name: "credentials/pw"}, SealedSecret: sealed}}}})
		f.apply(&ledgerv1.Command{Op: &ledgerv1.Command_PutSource{PutSource: &ledgerv1.PutSource{Source: &ferryv1.Source{
			Name: "sources/kvm1", Type: ferryv1.Platform_PLATFORM_KVM, Kvm: &ferryv1.KvmConnection{Address: "10.0.0.1", Credential: "credentials/pw"}}}}})
	}
	name := fmt.Sprintf("migrationJobs/j%d", len(f.ledger.Jobs(ledger.JobFilter{}))+1)
	f.apply(&ledgerv1.Command{Op: &ledgerv1.Command_CreateMigrationJobs{CreateMigrationJobs: &ledgerv1.CreateMigrationJobs{Jobs: []*ferryv1.MigrationJob{{
		Name: name, Source: "sources/kvm1", SourceVm: "vm1", MigrationServer: "migrationServers/ms",
		Target: &ferryv1.TargetVm{VmName: "vm1", Disks: []*ferryv1.TargetDisk{{SourceDisk: "vda", SizeBytes: diskBytes}}},
	}}}}})
	return name
}

// start runs a queued job on host under epoch.
func (f *fixture) start(job, host string, epoch int64) {
	f.t.Helper()
	f.apply(&ledgerv1.Command{Op: &ledgerv1.Command_StartMigrationJob{StartMigrationJob: &ledgerv1.StartMigrationJob{
		Name: job, Host: host, Epoch: epoch}}})
}

func (f *fixture) setGrace(d time.Duration) {
	s := ledger.DefaultSettings()
	s.AgentGracePeriod = durationpb.New(d)
	f.apply(&ledgerv1.Command{Op: &ledgerv1.Command_PutSettings{PutSettings: &ledgerv1.PutSettings{Settings: s}}})
}

// agent is the test's end of one stream.
type agent struct {
	t      *testing.T
	stream agentv1.AgentService_ConnectClient
	cancel context.CancelFunc
	in     chan *agentv1.ConnectResponse
	errc   chan error
}

func (f *fixture) connect(first *agentv1.ConnectRequest) *agent {
	f.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := agentv1.NewAgentServiceClient(f.conn).Connect(ctx)
	if err != nil {
		cancel()
		f.t.Fatal(err)
	}
	a := &agent{t: f.t, stream: stream, cancel: cancel, in: make(chan *agentv1.ConnectResponse, 64), errc: make(chan error, 1)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			msg, err := stream.Recv()
			if err != nil {
				a.errc <- err
				return
			}
			select {
			case a.in <- msg:
			case <-ctx.Done():
				return
			}
		}
	}()
	f.t.Cleanup(func() { cancel(); <-done })
	// io.EOF means the server already ended the stream; Recv has its status.
	if err := stream.Send(first); err != nil && !errors.Is(err, io.EOF) {
		f.t.Fatal(err)
	}
	return a
}

func hello(host string, held ...*agentv1.HeldJob) *agentv1.ConnectRequest {
	return &agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Hello{Hello: &agentv1.Hello{
		HostName: host, AgentVersion: "test", HeldJobs: held,
		Facts: &ferryv1.HostFacts{Cpus: 4, CacheFreeBytes: 10 << 30}}}}
}

func (a *agent) send(req *agentv1.ConnectRequest) {
	a.t.Helper()
	if err := a.stream.Send(req); err != nil {
		a.t.Fatal(err)
	}
}

// next returns the next message that is not a heartbeat or bandwidth
// limits (sent after every welcome to a migration server's host).
func (a *agent) next() *agentv1.ConnectResponse {
	a.t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case msg := <-a.in:
			if msg.GetHeartbeat() == nil && msg.GetBandwidthLimits() == nil {
				return msg
			}
		case err := <-a.errc:
			a.t.Fatalf("stream ended: %v", err)
		case <-deadline:
			a.t.Fatal("no message within 5s")
		}
	}
}

// nextLimits returns the next bandwidth limits message, skipping others.
func (a *agent) nextLimits() *agentv1.BandwidthLimits {
	a.t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case msg := <-a.in:
			if b := msg.GetBandwidthLimits(); b != nil {
				return b
			}
		case err := <-a.errc:
			a.t.Fatalf("stream ended: %v", err)
		case <-deadline:
			a.t.Fatal("no bandwidth limits within 5s")
		}
	}
}

// ended waits for the stream to end and returns its error.
func (a *agent) ended() error {
	a.t.Helper()
	select {
	case err := <-a.errc:
		return err
	case <-time.After(5 * time.Second):
		a.t.Fatal("stream still open after 5s")
	}
	return nil
}
