package server

import (
	"context"
	"log/slog"
	"strings"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	"github.com/ferry-v2v/ferry/coordinator/internal/api"
	"github.com/ferry-v2v/ferry/coordinator/internal/authz"
	"github.com/ferry-v2v/ferry/coordinator/internal/consensus"
	"github.com/ferry-v2v/ferry/coordinator/internal/fsm"
	"github.com/ferry-v2v/ferry/coordinator/internal/leader"
	"github.com/ferry-v2v/ferry/coordinator/internal/scheduler"
	"github.com/ferry-v2v/ferry/coordinator/internal/session"
	"github.com/ferry-v2v/ferry/pkg/grpcutil"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	"github.com/ferry-v2v/ferry/pkg/seal"
)

// parts are the services a node serves and the loops it runs.
type parts struct {
	api      *api.API
	sessions *session.Manager
	sched    *scheduler.Scheduler
	authz    *authz.Authorizer // nil when calls are not authorized
	unary    []grpc.UnaryServerInterceptor
	stream   []grpc.StreamServerInterceptor
}

func newParts(s *Server, sealer *seal.Sealer) parts {
	sessions := session.NewManager(session.Config{NodeID: s.cfg.NodeID}, session.Deps{
		Proposer: s.node, Ledger: s.ledger, Hub: s.hub, Sealer: sealer, Logger: s.log, Meter: s.metrics,
	})
	s.ledger.SetServerObserver(sessions.ServerChanged)
	s.metrics.SetLiveFacts(sessions.Hosts)
	a := api.New(api.Deps{
		Proposer: s.node, Membership: s.node, Ledger: s.ledger, Hub: s.hub,
		Sealer: sealer, Agents: sessions, Dialer: s.peers.Dial, Logger: s.log,
		AuditRetention: api.AuditRetention{MaxAge: s.cfg.AuditRetention, MaxEvents: s.cfg.AuditMaxEvents}, AuditOff: s.cfg.AuditOff,
		Reads: readState{s.fsm, s.node}, HeartbeatTimeout: s.node.HeartbeatTimeout(), ForwardTimeout: s.cfg.ForwardTimeout,
	})
	sched := scheduler.New(scheduler.Config{}, scheduler.Deps{
		Proposer: s.node, Ledger: s.ledger, Hub: s.hub, Agents: sessions, Logger: s.log,
	})
	p := parts{
		api: a, sessions: sessions, sched: sched,
		unary:  []grpc.UnaryServerInterceptor{a.UnaryInterceptor()},
		stream: []grpc.StreamServerInterceptor{agentLeaderTrailer(), a.StreamInterceptor()},
	}
	if !s.cfg.Insecure && !s.cfg.AuthorizationOff {
		// First in the chain: a refused call reaches nothing else.
		p.authz = authz.New(s.ledger, s.log)
		p.unary = append([]grpc.UnaryServerInterceptor{p.authz.Unary()}, p.unary...)
		p.stream = append([]grpc.StreamServerInterceptor{p.authz.Stream()}, p.stream...)
	}
	// Before authorization: refused calls are counted too.
	p.unary = append([]grpc.UnaryServerInterceptor{s.metrics.UnaryInterceptor()}, p.unary...)
	p.stream = append([]grpc.StreamServerInterceptor{s.metrics.StreamInterceptor()}, p.stream...)
	return p
}

// readState is the API's view of how fresh this node's ledger is: the
// FSM's applied index and the Raft node's read floor and leader contact.
type readState struct {
	*fsm.FSM
	*consensus.Node
}

func (p parts) register(s *grpc.Server) {
	p.api.Register(s)
	agentv1.RegisterAgentServiceServer(s, p.sessions)
}

// run runs the leader-only duties in every term this node leads (the one
// leader step: barrier, then sessions' duties, the scheduler and the
// inventory syncs; all stopped when leadership is lost), then closes the
// agent sessions when ctx ends.
func (p parts) run(ctx context.Context, g *errgroup.Group, node leader.Node, log *slog.Logger) {
	g.Go(func() error {
		leader.Run(ctx, node, log, p.sessions, p.sched, leader.DutyFunc(p.api.LeadInventorySync))
		p.sessions.Shutdown()
		return nil
	})
	// Every node applies revocations to its open streams, leader or not.
	if p.authz != nil {
		g.Go(func() error { return p.authz.Run(ctx) })
	}
}

// agentLeaderTrailer puts the leader's address in the ferry-leader trailer
// when a follower refuses an agent session; the API's own interceptor does
// the same for ferry.v1 calls.
func agentLeaderTrailer() grpc.StreamServerInterceptor {
	inner := grpcutil.LeaderTrailerStreamInterceptor()
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if !strings.HasPrefix(info.FullMethod, "/ferry.agent.v1.") {
			return handler(srv, ss)
		}
		return inner(srv, ss, info, handler)
	}
}
