// Package session holds the leader's side of the agent streams
// (AgentService.Connect): one session per connected agent, with a receive
// loop and a send loop. It records hosts and their facts, turns progress
// and results into live progress and ledger commands, hands assignments
// from the scheduler to agents, cancels jobs on agents, and fails the jobs
// of agents gone longer than the grace period.
package session

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ferry-v2v/ferry/coordinator/internal/fsm"
	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	"github.com/ferry-v2v/ferry/coordinator/internal/watch"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// Defaults of Config.
const (
	DefaultHeartbeatInterval  = 2 * time.Second
	DefaultCheckpointInterval = 30 * time.Second
	DefaultSweepInterval      = time.Second
	DefaultProposeTimeout     = 5 * time.Second
	// missedHeartbeats is how many heartbeat intervals of silence drop a session.
	missedHeartbeats = 3
	// outboxSize is how many messages may wait for a session's send loop.
	outboxSize = 256
)

// ErrNotConnected: the host has no session on this node.
var ErrNotConnected = errors.New("agent not connected")

// Config tunes the manager. Zero values take the defaults above.
type Config struct {
	// NodeID names this coordinator in Welcome.
	NodeID string
	// HeartbeatInterval is how often both sides send heartbeats; a session
	// silent for three intervals is dropped.
	HeartbeatInterval time.Duration
	// CheckpointInterval is how often a running job's progress is written
	// to the ledger when its phase does not change; it is also how often
	// the leader refreshes connected hosts (facts, last seen) in the ledger.
	CheckpointInterval time.Duration
	// SweepInterval is how often the leader looks for agents gone past
	// the grace period.
	SweepInterval time.Duration
	// ProposeTimeout bounds each ledger write the manager makes.
	ProposeTimeout time.Duration
}

// Validate checks cfg.
func (c Config) Validate() error {
	for name, d := range map[string]time.Duration{
		"heartbeat interval": c.HeartbeatInterval, "checkpoint interval": c.CheckpointInterval,
		"sweep interval": c.SweepInterval, "propose timeout": c.ProposeTimeout,
	} {
		if d < 0 {
			return fmt.Errorf("session: %s %s is negative", name, d)
		}
	}
	return nil
}

func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.HeartbeatInterval, DefaultHeartbeatInterval)
	def(&c.CheckpointInterval, DefaultCheckpointInterval)
	def(&c.SweepInterval, DefaultSweepInterval)
	def(&c.ProposeTimeout, DefaultProposeTimeout)
	return c
}

// Proposer is the Raft node as the manager uses it. Propose fails with an
// error wrapping consensus.ErrNotLeader on a follower.
type Proposer interface {
	Propose(ctx context.Context, cmd *ledgerv1.Command) (fsm.Result, error)
	IsLeader() bool
	LeaderAPIAddress() string
}

// Sealer opens sealed credentials (aad is the credential's name) and
// seals the bundle signing key the leader makes (*seal.Sealer).
type Sealer interface {
	Seal(plaintext, aad []byte) ([]byte, error)
	Open(sealed, aad []byte) ([]byte, error)
}

// Clock tells the time; tests may stop it.
type Clock interface{ Now() time.Time }

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// Deps are the manager's collaborators. Logger and Clock may be nil.
type Deps struct {
	Proposer Proposer
	Ledger   *ledger.Ledger
	Hub      *watch.Hub
	Sealer   Sealer
	Logger   *slog.Logger
	Clock    Clock
	// Meter counts the bytes and rates the agents report (the
	// coordinator's metrics); nil counts nothing.
	Meter Meter
}

// Meter is told every progress report and result of a job's current
// assignment, with the job's migration server.
type Meter interface {
	JobProgress(job, server string, epoch int64, timings []*ferryv1.PhaseTiming, disks []*ferryv1.DiskProgress, final bool)
}

// Manager serves AgentService and keeps the sessions of this node.
type Manager struct {
	agentv1.UnimplementedAgentServiceServer

	cfg    Config
	raft   Proposer
	ledger *ledger.Ledger
	hub    *watch.Hub
	seal   Sealer
	log    *slog.Logger
	clock  Clock
	meter  Meter

	// streams counts Connect handlers and their receive loops, which
	// outlive their handlers briefly; Run waits for them when it stops.
	streams sync.WaitGroup

	mu       sync.Mutex
	nextID   uint64
	sessions map[string]*session   // by host name (hosts/{id}), once they said hello
	open     map[*session]struct{} // every open stream, hello or not
	gone     map[string]time.Time
	closed   bool

	limitsMu sync.Mutex // guards limits.pending; taken under the ledger's lock, so it takes no other lock
	limits   limitsChanges

	targets targetRelay
}

// NewManager returns a manager; call Run to start its leader duties.
func NewManager(cfg Config, deps Deps) *Manager {
	log := deps.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	clock := deps.Clock
	if clock == nil {
		clock = systemClock{}
	}
	return &Manager{
		cfg:      cfg.withDefaults(),
		raft:     deps.Proposer,
		ledger:   deps.Ledger,
		hub:      deps.Hub,
		seal:     deps.Sealer,
		log:      log.With("component", "session"),
		clock:    clock,
		meter:    deps.Meter,
		sessions: map[string]*session{},
		open:     map[*session]struct{}{},
		gone:     map[string]time.Time{},
		limits:   limitsChanges{signal: make(chan struct{}, 1), pending: map[string]bool{}},
	}
}

// HostName turns an agent's host name or a host reference into the host
// resource name, hosts/{id}.
func HostName(s string) string {
	if strings.HasPrefix(s, "hosts/") {
		return s
	}
	return "hosts/" + s
}

// Connected reports whether host's agent holds a session on this node.
func (m *Manager) Connected(host string) bool {
	s := m.session(HostName(host))
	return s != nil && s.welcomed.Load()
}

// Hosts returns the latest facts of every host connected to this node.
func (m *Manager) Hosts() map[string]*ferryv1.HostFacts {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]*ferryv1.HostFacts, len(m.sessions))
	for name, s := range m.sessions {
		if s.welcomed.Load() {
			out[name] = proto.Clone(s.record().GetFacts()).(*ferryv1.HostFacts)
		}
	}
	return out
}

func (m *Manager) session(host string) *session {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.sessions[host]
}

// register makes s the session of host, ending any older one. A session
// whose stream has ended meanwhile is refused.
func (m *Manager) register(s *session, host string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return errShuttingDown
	}
	if err := s.ctx.Err(); err != nil {
		return context.Cause(s.ctx)
	}
	if err := m.mayTakeLocked(s, host); err != nil {
		return err
	}
	s.host = host
	if old := m.sessions[s.host]; old != nil {
		old.cancel(errReplaced)
	}
	m.sessions[s.host] = s
	delete(m.gone, s.host)
	return nil
}

// mayTake refuses s as host's session while host has a session of another
// identity: a session is replaced only by its own agent reconnecting.
func (m *Manager) mayTake(s *session, host string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.mayTakeLocked(s, host)
}

func (m *Manager) mayTakeLocked(s *session, host string) error {
	old := m.sessions[host]
	if old == nil || old == s || (old.authed == s.authed && old.identity == s.identity) {
		return nil
	}
	return status.Errorf(codes.PermissionDenied, "%s has a session of %s; %s cannot replace it", host, old.identity, s.identity)
}

// unregister forgets s if it is still its host's session, and reports so.
func (m *Manager) unregister(s *session) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if s.host == "" || m.sessions[s.host] != s {
		return false
	}
	delete(m.sessions, s.host)
	m.gone[s.host] = m.clock.Now()
	return true
}

// closeAll ends every stream with cause, whether it said hello or not.
func (m *Manager) closeAll(cause error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for s := range m.open {
		s.cancel(cause)
	}
}

// propose writes one command to the ledger, stamped with the clock.
func (m *Manager) propose(ctx context.Context, cmd *ledgerv1.Command) error {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.ProposeTimeout)
	defer cancel()
	cmd.Time = timestamp(m.clock.Now())
	_, err := m.raft.Propose(ctx, cmd)
	return err
}

// gracePeriod is the agent grace period setting.
func (m *Manager) gracePeriod() time.Duration {
	if d := m.ledger.Settings().GetAgentGracePeriod(); d != nil && d.AsDuration() > 0 {
		return d.AsDuration()
	}
	return ledger.DefaultAgentGracePeriod
}

// guestShutdownTimeout is the guest shutdown timeout setting.
func (m *Manager) guestShutdownTimeout() time.Duration {
	if d := m.ledger.Settings().GetGuestShutdownTimeout(); d != nil && d.AsDuration() > 0 {
		return d.AsDuration()
	}
	return ledger.DefaultGuestShutdownTimeout
}
