package session

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferry-v2v/ferry/coordinator/internal/authz"
	"github.com/ferry-v2v/ferry/pkg/grpcutil"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/tlsutil"
)

var (
	errReplaced     = status.Error(codes.Aborted, "session replaced by a newer session of the same host")
	errShuttingDown = status.Error(codes.Unavailable, "coordinator is shutting down")
	errNotLeader    = errors.New("this coordinator is no longer the leader")
)

// session is one agent's stream. Only the send loop calls stream.Send and
// only the receive loop calls stream.Recv.
type session struct {
	id       uint64
	host     string
	stream   agentv1.AgentService_ConnectServer
	out      chan *agentv1.ConnectResponse
	ctx      context.Context
	cancel   context.CancelCauseFunc
	lastRecv atomic.Int64 // unix nanoseconds by the manager's clock
	welcomed atomic.Bool
	// identity is the agent's certificate identity; authed is false when
	// the coordinator does not authorize calls (--insecure).
	identity tlsutil.Identity
	authed   bool

	mu       sync.Mutex
	hostRec  *ferryv1.Host                              // as last recorded, facts updated by heartbeats
	recorded time.Time                                  // when hostRec was last written to the ledger
	jobs     map[string]*liveJob                        // jobs this agent runs for the current leader
	waiting  map[string]chan *agentv1.InventoryResponse // inventory calls by request ID
	synced   map[string]bool                            // sources this agent was asked to sync
}

// liveJob is what the session knows of a job its agent runs.
type liveJob struct {
	epoch      int64
	phase      ferryv1.MigrationJobPhase
	checkpoint time.Time
	timings    int       // phases begun plus phases ended, as last checkpointed
	rounds     int       // precopy rounds, as last checkpointed
	cutover    time.Time // the cutover time last sent to the agent
}

func (s *session) record() *ferryv1.Host {
	s.mu.Lock()
	defer s.mu.Unlock()
	return proto.Clone(s.hostRec).(*ferryv1.Host)
}

// send queues msg for the send loop.
func (s *session) send(ctx context.Context, msg *agentv1.ConnectResponse) error {
	select {
	case s.out <- msg:
		return nil
	case <-s.ctx.Done():
		return fmt.Errorf("%s: %w", s.host, ErrNotConnected)
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *session) track(job string, epoch int64, phase ferryv1.MigrationJobPhase, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.jobs[job] = &liveJob{epoch: epoch, phase: phase, checkpoint: now}
}

// cutoverDue records at as the cutover time sent for job under epoch and
// reports whether it had not been sent yet.
func (s *session) cutoverDue(job string, epoch int64, at time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	j, ok := s.jobs[job]
	if !ok || j.epoch != epoch || j.cutover.Equal(at) {
		return false
	}
	j.cutover = at
	return true
}

// untrack forgets job if it runs under epoch, and reports whether it did.
func (s *session) untrack(job string, epoch int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if j, ok := s.jobs[job]; ok && j.epoch == epoch {
		delete(s.jobs, job)
		return true
	}
	return false
}

// Connect serves one agent session. Only the leader accepts sessions.
func (m *Manager) Connect(stream agentv1.AgentService_ConnectServer) error {
	if !m.raft.IsLeader() {
		return grpcutil.NotLeaderError(m.raft.LeaderAPIAddress())
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return errShuttingDown
	}
	m.streams.Add(1)
	defer m.streams.Done()
	m.nextID++
	ctx, cancel := context.WithCancelCause(stream.Context())
	defer cancel(nil)
	s := &session{id: m.nextID, stream: stream, out: make(chan *agentv1.ConnectResponse, outboxSize),
		ctx: ctx, cancel: cancel, jobs: map[string]*liveJob{}, waiting: map[string]chan *agentv1.InventoryResponse{}, synced: map[string]bool{}}
	if c, ok := authz.CallerFrom(stream.Context()); ok {
		s.identity, s.authed = c.Identity, true
	}
	m.open[s] = struct{}{}
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		delete(m.open, s)
		m.mu.Unlock()
	}()
	s.lastRecv.Store(m.clock.Now().UnixNano())

	// The receive loop blocks in Recv until the stream ends, which gRPC does
	// only once this handler returns; the manager owns it and waits for it.
	m.streams.Add(1)
	go func() {
		defer m.streams.Done()
		cancel(m.recvLoop(ctx, s))
	}()
	err := m.sendLoop(ctx, s)
	cancel(err)
	cause := context.Cause(ctx)
	m.end(s, cause)
	return m.statusOf(cause)
}

// statusOf turns why a session ended into what the agent is told. A
// session that ends because this node stopped leading (a refused ledger
// write, or the leadership watcher) sends the agent to the new leader.
func (m *Manager) statusOf(cause error) error {
	switch {
	case cause == nil, errors.Is(cause, io.EOF), errors.Is(cause, context.Canceled):
		return nil
	case errors.Is(cause, errNotLeader), !m.raft.IsLeader():
		return grpcutil.NotLeaderError(m.raft.LeaderAPIAddress())
	}
	if _, ok := status.FromError(cause); ok {
		return cause
	}
	return status.Error(codes.Unavailable, cause.Error())
}

// end runs once the send loop has stopped: the requests relayed to the
// session are answered as failed, and the host is marked disconnected if
// this was its current session and this node still leads.
func (m *Manager) end(s *session, cause error) {
	m.relayedGone(s)
	if !m.unregister(s) {
		return
	}
	m.log.Info("agent disconnected", "host", s.host, "session", s.id, "cause", cause)
	if !m.raft.IsLeader() {
		return
	}
	cmd := &ledgerv1.Command{Op: &ledgerv1.Command_SetHostConnected{
		SetHostConnected: &ledgerv1.SetHostConnected{Name: s.host, Connected: false}}}
	if err := m.propose(context.Background(), cmd); err != nil {
		m.log.Warn("record host disconnected", "host", s.host, "err", err)
	}
}

// recvLoop reads the agent's messages; the first one must be Hello.
func (m *Manager) recvLoop(ctx context.Context, s *session) error {
	for {
		req, err := s.stream.Recv()
		if err != nil {
			return err
		}
		s.lastRecv.Store(m.clock.Now().UnixNano())
		if !s.welcomed.Load() {
			hello := req.GetHello()
			if hello == nil {
				return status.Error(codes.InvalidArgument, "the first message of a session must be hello")
			}
			if err := m.hello(ctx, s, hello); err != nil {
				return err
			}
			continue
		}
		if err := m.handle(ctx, s, req); err != nil {
			return err
		}
	}
}

func (m *Manager) handle(ctx context.Context, s *session, req *agentv1.ConnectRequest) error {
	switch k := req.GetKind().(type) {
	case *agentv1.ConnectRequest_Heartbeat:
		if f := k.Heartbeat.GetFacts(); f != nil {
			if err := checkFacts("heartbeat.facts", f); err != nil {
				return err
			}
			s.mu.Lock()
			s.hostRec.Facts = f
			s.mu.Unlock()
		}
		return nil
	case *agentv1.ConnectRequest_Progress:
		return m.progress(ctx, s, k.Progress)
	case *agentv1.ConnectRequest_Result:
		return m.result(ctx, s, k.Result)
	case *agentv1.ConnectRequest_InventoryResponse:
		m.inventoryAnswer(s, k.InventoryResponse)
		return nil
	case *agentv1.ConnectRequest_HostKeyObserved:
		return m.hostKey(ctx, s, k.HostKeyObserved)
	case *agentv1.ConnectRequest_FenceCheck:
		return m.fence(ctx, s, k.FenceCheck)
	case *agentv1.ConnectRequest_TargetRequest:
		return m.targetRequest(ctx, s, k.TargetRequest)
	case *agentv1.ConnectRequest_SignBundle:
		return m.signBundle(ctx, s, k.SignBundle)
	case *agentv1.ConnectRequest_TargetWorkResult:
		return m.targetResult(ctx, s, k.TargetWorkResult)
	case *agentv1.ConnectRequest_Hello:
		return status.Error(codes.InvalidArgument, "hello sent twice in one session")
	default:
		return status.Errorf(codes.InvalidArgument, "unknown message %T", req.GetKind())
	}
}

// hello records the host, accepts the session and reconciles held jobs.
func (m *Manager) hello(ctx context.Context, s *session, h *agentv1.Hello) error {
	if err := checkHello(h); err != nil {
		return err
	}
	if err := s.checkIdentity(h.GetHostName()); err != nil {
		return err
	}
	name := HostName(h.GetHostName())
	if err := m.mayTake(s, name); err != nil {
		return err
	}
	host := &ferryv1.Host{Name: name, Cluster: clusterName(h.GetCluster()), Facts: h.GetFacts(),
		Connected: true, AgentVersion: h.GetAgentVersion()}
	s.mu.Lock()
	s.hostRec = host
	s.mu.Unlock()
	cmd := &ledgerv1.Command{Op: &ledgerv1.Command_PutHost{PutHost: &ledgerv1.PutHost{Host: proto.Clone(host).(*ferryv1.Host)}}}
	if err := m.propose(ctx, cmd); err != nil {
		return fmt.Errorf("record host %s: %w", name, err)
	}
	s.mu.Lock()
	s.recorded = m.clock.Now()
	s.mu.Unlock()
	if err := m.register(s, name); err != nil {
		return err
	}
	welcome := &agentv1.Welcome{CoordinatorId: m.cfg.NodeID, HeartbeatIntervalMs: m.cfg.HeartbeatInterval.Milliseconds(),
		GracePeriodMs: m.gracePeriod().Milliseconds(), CacheRetentionMs: m.ledger.Settings().GetCacheRetention().AsDuration().Milliseconds(),
		StoragePaths: m.storagePaths(name)}
	if err := s.send(ctx, &agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_Welcome{Welcome: welcome}}); err != nil {
		return err
	}
	s.welcomed.Store(true)
	m.log.Info("agent connected", "host", s.host, "session", s.id, "agent_version", h.GetAgentVersion(),
		"held_jobs", len(h.GetHeldJobs()))
	m.sendHostLimits(ctx, s)
	if err := m.sendPendingCleanups(ctx, s); err != nil {
		return err
	}
	return m.reconcile(ctx, s, h.GetHeldJobs())
}

// storagePaths are the paths whose space the agent of host reports in its
// facts: every local and NFS primary storage's, and the cache_path of each
// migration server on host, which the scheduler's cache admission and the
// preview read (package capacity). Every agent gets all the storage paths:
// local storage is written on the migration server's host, which need not
// be in the storage's cluster, and measuring a path that is not there
// costs a statfs of its parent.
//
// Every session asks it at each heartbeat, so it reads the ledger without
// copying; the paths come out sorted, as the agents compare them.
func (m *Manager) storagePaths(host string) []string {
	var out []string
	m.ledger.VisitMigrationServers(func(srv *ferryv1.MigrationServer) bool {
		if HostName(srv.GetHost()) == host && srv.GetCachePath() != "" {
			out = append(out, srv.GetCachePath())
		}
		return true
	})
	m.ledger.VisitPrimaryStorages(func(ps *ferryv1.PrimaryStorage) bool {
		switch ps.GetType() {
		case ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_LOCAL, ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_NFS:
			if ps.GetPath() != "" {
				out = append(out, ps.GetPath())
			}
		}
		return true
	})
	slices.Sort(out)
	return out
}

func clusterName(c string) string {
	if c == "" || strings.HasPrefix(c, "clusters/") {
		return c
	}
	return "clusters/" + c
}

// sendLoop writes queued messages and heartbeats, and drops the session
// when the agent has been silent for three heartbeat intervals.
func (m *Manager) sendLoop(ctx context.Context, s *session) error {
	tick := time.NewTicker(m.cfg.HeartbeatInterval)
	defer tick.Stop()
	silence := missedHeartbeats * m.cfg.HeartbeatInterval
	for {
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case msg := <-s.out:
			if err := s.stream.Send(msg); err != nil {
				return err
			}
		case <-tick.C:
			now := m.clock.Now()
			if quiet := now.Sub(time.Unix(0, s.lastRecv.Load())); quiet > silence {
				return status.Errorf(codes.DeadlineExceeded, "no message from the agent for %s", quiet.Round(time.Millisecond))
			}
			if !s.welcomed.Load() {
				continue
			}
			hb := &agentv1.Heartbeat{Time: timestamppb.New(now), StoragePaths: m.storagePaths(s.host),
				GracePeriodMs: m.gracePeriod().Milliseconds()}
			if err := s.stream.Send(&agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_Heartbeat{Heartbeat: hb}}); err != nil {
				return err
			}
		}
	}
}

func timestamp(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t) }
