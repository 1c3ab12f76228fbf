package session

import (
	"context"

	"google.golang.org/protobuf/proto"

	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// limitsChanges are migration servers whose bandwidth limits changed in
// the ledger and are yet to be sent to their agents. The ledger tells of
// them while it is locked; the leader's loop sends them.
type limitsChanges struct {
	signal  chan struct{} // holds one token while pending is not empty
	pending map[string]bool
}

// ServerChanged notes that a migration server's bandwidth limits changed
// (ledger.SetServerObserver). It never blocks: the leader's loop sends the
// server's current limits to the agent of its host.
func (m *Manager) ServerChanged(ms *ferryv1.MigrationServer) {
	m.limitsMu.Lock()
	m.limits.pending[ms.GetName()] = true
	m.limitsMu.Unlock()
	select {
	case m.limits.signal <- struct{}{}:
	default:
	}
}

// sendChangedLimits sends every pending server's current limits to its
// host's session, if it has one here. An agent without a session gets
// them when it says hello.
func (m *Manager) sendChangedLimits(ctx context.Context) {
	m.limitsMu.Lock()
	names := m.limits.pending
	m.limits.pending = map[string]bool{}
	m.limitsMu.Unlock()
	for name := range names {
		ms, ok := m.ledger.MigrationServer(name)
		if !ok {
			continue
		}
		s := m.session(HostName(ms.GetHost()))
		if s == nil || !s.welcomed.Load() {
			continue
		}
		m.sendLimits(ctx, s, ms)
	}
}

// sendLimits queues ms's limits on s, the session of ms's host.
func (m *Manager) sendLimits(ctx context.Context, s *session, ms *ferryv1.MigrationServer) {
	sendCtx, cancel := context.WithTimeout(ctx, m.cfg.HeartbeatInterval)
	defer cancel()
	if err := s.send(sendCtx, limitsMessage(ms)); err != nil {
		m.log.Warn("cannot send bandwidth limits", "host", s.host, "migration_server", ms.GetName(), "err", err)
		return
	}
	m.log.Info("bandwidth limits sent to agent", "host", s.host, "migration_server", ms.GetName(),
		"upstream_bits_per_second", ms.GetUpstreamBitsPerSecond(), "downstream_bits_per_second", ms.GetDownstreamBitsPerSecond())
}

// sendHostLimits sends the limits of the migration server on s's host, if
// it has one: an agent that was away may have missed a change.
func (m *Manager) sendHostLimits(ctx context.Context, s *session) {
	if ms, ok := m.ledger.MigrationServerOfHost(s.host); ok {
		m.sendLimits(ctx, s, ms)
	}
}

// limitsAfterAssign sends the server's limits again when the ledger's
// differ from those a carries: they changed between building a and
// queuing it, and a would otherwise set the agent's buckets back.
func (m *Manager) limitsAfterAssign(ctx context.Context, s *session, a *agentv1.Assignment) {
	ms, ok := m.ledger.MigrationServer(a.GetMigrationServer().GetName())
	if !ok || ms.GetHost() != s.host {
		return
	}
	if proto.Equal(limitsOf(ms), limitsOf(a.GetMigrationServer())) {
		return
	}
	m.sendLimits(ctx, s, ms)
}

func limitsOf(ms *ferryv1.MigrationServer) *agentv1.BandwidthLimits {
	return &agentv1.BandwidthLimits{MigrationServer: ms.GetName(),
		UpstreamBitsPerSecond: ms.GetUpstreamBitsPerSecond(), DownstreamBitsPerSecond: ms.GetDownstreamBitsPerSecond()}
}

func limitsMessage(ms *ferryv1.MigrationServer) *agentv1.ConnectResponse {
	return &agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_BandwidthLimits{BandwidthLimits: limitsOf(ms)}}
}
