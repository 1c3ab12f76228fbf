package api

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferry-v2v/ferry/coordinator/internal/consensus"
	"github.com/ferry-v2v/ferry/coordinator/internal/fsm"
	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	"github.com/ferry-v2v/ferry/coordinator/internal/watch"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/seal"
)

// fakeRaft is an in-memory Proposer: on the "leader" it applies commands
// straight to a real FSM, as a committed log entry would be; on a
// "follower" it refuses like consensus does. It also plays Membership.
type fakeRaft struct {
	mu         sync.Mutex
	fsm        *fsm.FSM
	leader     atomic.Bool
	leaderAddr atomic.Value // string
	linearized atomic.Int32
	index      uint64
	id         string
	members    []consensus.Member
}

func (f *fakeRaft) Propose(_ context.Context, cmd *ledgerv1.Command) (fsm.Result, error) {
	if !f.leader.Load() {
		return fsm.Result{}, fmt.Errorf("propose: %w (leader %q)", consensus.ErrNotLeader, "other")
	}
	b, err := proto.Marshal(cmd) // the FSM gets its own copy, as from the log
	if err != nil {
		return fsm.Result{}, err
	}
	var c ledgerv1.Command
	if err := proto.Unmarshal(b, &c); err != nil {
		return fsm.Result{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.index++
	names, err := f.fsm.ApplyCommand(&c)
	return fsm.Result{Names: names, Err: err}, err
}

func (f *fakeRaft) IsLeader() bool { return f.leader.Load() }

func (f *fakeRaft) LeaderAPIAddress() string { s, _ := f.leaderAddr.Load().(string); return s }

func (f *fakeRaft) LinearizableRead(context.Context) error {
	if !f.leader.Load() {
		return fmt.Errorf("verify leader: %w", consensus.ErrNotLeader)
	}
	f.linearized.Add(1)
	return nil
}

func (f *fakeRaft) ID() string { return f.id }

func (f *fakeRaft) AddVoter(_ context.Context, id, addr string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.members = append(f.members, consensus.Member{ID: id, RaftAddress: addr, Suffrage: "Voter"})
	return nil
}

func (f *fakeRaft) RemoveVoter(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, m := range f.members {
		if m.ID == id {
			f.members = append(f.members[:i], f.members[i+1:]...)
			return nil
		}
	}
	return fmt.Errorf("remove voter %s: %w", id, consensus.ErrUnknownMember)
}

func (f *fakeRaft) Members() ([]consensus.Member, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]consensus.Member(nil), f.members...), nil
}

func (f *fakeRaft) Stats() consensus.Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return consensus.Stats{LastIndex: f.index, CommitIndex: f.index, AppliedIndex: f.index}
}

// lockedBuffer collects log output from concurrent handlers.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// env is one API served over bufconn, called through generated clients.
type env struct {
	t      *testing.T
	ledger *ledger.Ledger
	raft   *fakeRaft
	hub    *watch.Hub
	api    *API
	sealer *seal.Sealer
	logs   *lockedBuffer
	lis    *bufconn.Listener
	now    time.Time

	inv      ferryv1.TargetInventoryServiceClient
	servers  ferryv1.MigrationServerServiceClient
	sources  ferryv1.SourceServiceClient
	jobs     ferryv1.MigrationJobServiceClient
	settings ferryv1.SettingsServiceClient
	cluster  ferryv1.MembershipServiceClient
	mappings ferryv1.NetworkMappingServiceClient
}

type envOption func(*Deps)

func withDialer(d Dialer) envOption { return func(deps *Deps) { deps.Dialer = d } }

func newEnv(t *testing.T, leader bool, opts ...envOption) *env {
	t.Helper()
	e := &env{t: t, ledger: ledger.New(), logs: &lockedBuffer{}, now: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
	e.raft = &fakeRaft{fsm: fsm.New(e.ledger, nil), id: "node-a",
		members: []consensus.Member{{ID: "node-a", RaftAddress: "127.0.0.1:7000", Suffrage: "Voter", Leader: leader}}}
	e.raft.leader.Store(leader)
	e.raft.leaderAddr.Store("")
	e.hub = watch.New(e.ledger.Job)
	e.ledger.SetObserver(e.hub.JobChanged)
	var err error
	if e.sealer, err = seal.New(bytes.Repeat([]byte{7}, seal.KeySize)); err != nil {
		t.Fatal(err)
	}
	var ids atomic.Int64
	var clockMu sync.Mutex
	deps := Deps{
		Proposer: e.raft, Membership: e.raft, Ledger: e.ledger, Hub: e.hub, Sealer: e.sealer,
		Logger: slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Clock: func() time.Time {
			clockMu.Lock()
			defer clockMu.Unlock()
			e.now = e.now.Add(time.Second)
			return e.now
		},
		NewID: func() string { return fmt.Sprintf("id-%d", ids.Add(1)) },
	}
	for _, o := range opts {
		o(&deps)
	}
	e.api = New(deps)
	e.serve()
	return e
}

func (e *env) serve() {
	e.lis = bufconn.Listen(1 << 20)
	s := grpc.NewServer(grpc.ChainUnaryInterceptor(e.api.UnaryInterceptor()), grpc.ChainStreamInterceptor(e.api.StreamInterceptor()))
	e.api.Register(s)
	go func() { _ = s.Serve(e.lis) }()
	e.t.Cleanup(s.Stop)
	conn := e.dial(context.Background())
	e.inv = ferryv1.NewTargetInventoryServiceClient(conn)
	e.servers = ferryv1.NewMigrationServerServiceClient(conn)
	e.sources = ferryv1.NewSourceServiceClient(conn)
	e.jobs = ferryv1.NewMigrationJobServiceClient(conn)
	e.settings = ferryv1.NewSettingsServiceClient(conn)
	e.cluster = ferryv1.NewMembershipServiceClient(conn)
	e.mappings = ferryv1.NewNetworkMappingServiceClient(conn)
}

// dial opens a client connection to this env's server.
func (e *env) dial(context.Context) *grpc.ClientConn {
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return e.lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// apply puts a command straight into the FSM, as another component
// (agent sessions, the scheduler) would through Raft.
func (e *env) apply(cmd *ledgerv1.Command) []string {
	e.t.Helper()
	cmd.Time = timestamppb.New(e.now)
	res, err := e.raft.Propose(context.Background(), cmd)
	if err != nil {
		e.t.Fatalf("apply %v: %v", cmd, err)
	}
	return res.Names
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

// wantCode fails unless err has code and a message starting with prefix.
func wantCode(t *testing.T, err error, code codes.Code, prefix string) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != code || !strings.HasPrefix(st.Message(), prefix) {
		t.Fatalf("got %v %q, want %v starting with %q", st.Code(), st.Message(), code, prefix)
	}
}

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}
