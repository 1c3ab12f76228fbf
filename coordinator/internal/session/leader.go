package session

import (
	"context"
	"fmt"
	"time"

	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	"github.com/ferry-v2v/ferry/coordinator/internal/watch"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// ReasonAgentLost starts the reason of jobs failed because their agent was
// gone longer than the grace period.
const ReasonAgentLost = "agent lost"

// Lead carries out the leader's duties for one term (see package
// leader): making the bundle signing key if the cluster has none, the
// grace sweeper, cancellations of jobs on agents,
// refreshing connected hosts in the ledger, and sending changed bandwidth
// limits to the agents of their servers. It returns when ctx ends.
func (m *Manager) Lead(ctx context.Context) { m.lead(ctx) }

// Follow closes every session once this node no longer leads, so the
// agents move to the new leader, and resets what watchers were told.
func (m *Manager) Follow() {
	m.closeAll(errNotLeader)
	m.hub.Reset()
}

// Shutdown refuses new sessions, ends the open ones and waits for their
// handlers; the node calls it when it stops, after its leader duties.
func (m *Manager) Shutdown() { m.shutdown() }

// shutdown refuses new sessions, ends the open ones and waits for their
// handlers and receive loops.
func (m *Manager) shutdown() {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	m.closeAll(errShuttingDown)
	m.streams.Wait()
}

// lead runs one leadership term. The absences are counted from the first
// sweep on, when the ledger has applied what earlier leaders committed.
func (m *Manager) lead(ctx context.Context) {
	counting := false
	events, unsubscribe := m.hub.Subscribe(1024)
	defer func() { unsubscribe() }()
	// Agents may have connected, and jobs they run finished, since this
	// node began to lead and before it subscribed: look once at every
	// tracked job; the events cover what changes from here on.
	m.cancelFinished(ctx)
	// The bundle signing key is made once, by a leader: viewers reading
	// it (GetBundleSigningKey) never write; failing here, the sweeps and
	// the first signing try again.
	keyMade := m.ensureBundleKey(ctx)
	sweep := time.NewTicker(m.cfg.SweepInterval)
	defer sweep.Stop()
	refresh := time.NewTicker(m.cfg.CheckpointInterval)
	defer refresh.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				// We fell behind: start again and look at every tracked job.
				events, unsubscribe = m.hub.Subscribe(1024)
				m.cancelFinished(ctx)
				continue
			}
			if ev.Type == ferryv1.WatchEventType_WATCH_EVENT_TYPE_CHANGED ||
				ev.Type == ferryv1.WatchEventType_WATCH_EVENT_TYPE_DELETED {
				m.jobChanged(ctx, ev)
			}
		case <-sweep.C:
			if !keyMade {
				keyMade = m.ensureBundleKey(ctx)
			}
			if !counting {
				m.startAbsences()
				counting = true
			}
			m.sweep(ctx)
		case <-refresh.C:
			m.refreshHosts(ctx)
		case <-m.limits.signal:
			m.sendChangedLimits(ctx)
		}
	}
}

// startAbsences begins a term: every host without a session here counts
// as absent since it was last seen, as the ledger recorded it.
func (m *Manager) startAbsences() {
	hosts := m.ledger.Hosts("")
	m.mu.Lock()
	defer m.mu.Unlock()
	m.gone = map[string]time.Time{}
	for _, h := range hosts {
		if _, ok := m.sessions[h.GetName()]; !ok {
			m.gone[h.GetName()] = h.GetLastSeenTime().AsTime()
		}
	}
}

// jobChanged cancels on its agent a job that finished other than by the
// agent's own result (cancelled, its server deleted) while the agent runs it.
func (m *Manager) jobChanged(ctx context.Context, ev watch.Event) {
	j := ev.Job
	deleted := ev.Type == ferryv1.WatchEventType_WATCH_EVENT_TYPE_DELETED
	if !deleted && !ledger.Terminal(j.GetState()) {
		m.sendCutover(ctx, j)
		return
	}
	s := m.session(HostName(j.GetAssignedHost()))
	if s == nil || !s.untrack(j.GetName(), j.GetEpoch()) {
		return
	}
	reason := j.GetReason()
	if deleted {
		reason = "job deleted"
	}
	sendCtx, cancel := context.WithTimeout(ctx, m.cfg.HeartbeatInterval)
	defer cancel()
	if err := s.send(sendCtx, cancellation(j.GetName(), j.GetEpoch(), reason)); err != nil {
		m.log.Warn("cannot send cancellation", "host", s.host, "job", j.GetName(), "err", err)
		return
	}
	m.log.Info("cancelling job on agent", "host", s.host, "job", j.GetName(), "epoch", j.GetEpoch(), "reason", reason)
}

// sendCutover tells the agent running a warm job its cutover time, once
// per time set.
func (m *Manager) sendCutover(ctx context.Context, j *ferryv1.MigrationJob) {
	at := j.GetOptions().GetCutoverTime()
	if !ledger.IsWarm(j) || at == nil || j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING {
		return
	}
	s := m.session(HostName(j.GetAssignedHost()))
	if s == nil || !s.cutoverDue(j.GetName(), j.GetEpoch(), at.AsTime()) {
		return
	}
	sendCtx, cancel := context.WithTimeout(ctx, m.cfg.HeartbeatInterval)
	defer cancel()
	msg := &agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_Cutover{Cutover: &agentv1.Cutover{
		Job: j.GetName(), Epoch: j.GetEpoch(), CutoverTime: at}}}
	if err := s.send(sendCtx, msg); err != nil {
		m.log.Warn("cannot send cutover", "host", s.host, "job", j.GetName(), "err", err)
		return
	}
	m.log.Info("cutover sent to agent", "host", s.host, "job", j.GetName(), "epoch", j.GetEpoch(), "at", at.AsTime())
}

// cancelFinished looks at every job the sessions track, after missed events.
func (m *Manager) cancelFinished(ctx context.Context) {
	type ref struct {
		host, job string
	}
	var refs []ref
	m.mu.Lock()
	for host, s := range m.sessions {
		s.mu.Lock()
		for name := range s.jobs {
			refs = append(refs, ref{host, name})
		}
		s.mu.Unlock()
	}
	m.mu.Unlock()
	for _, r := range refs {
		if j, ok := m.ledger.Job(r.job); !ok {
			m.jobChanged(ctx, watch.Event{Type: ferryv1.WatchEventType_WATCH_EVENT_TYPE_DELETED,
				Job: &ferryv1.MigrationJob{Name: r.job, AssignedHost: r.host, Epoch: m.trackedEpoch(r.host, r.job)}})
		} else {
			m.jobChanged(ctx, watch.Event{Type: ferryv1.WatchEventType_WATCH_EVENT_TYPE_CHANGED, Job: j})
		}
	}
}

func (m *Manager) trackedEpoch(host, job string) int64 {
	s := m.session(host)
	if s == nil {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if j, ok := s.jobs[job]; ok {
		return j.epoch
	}
	return 0
}

// sweep marks absent hosts disconnected (after a change of leader the
// ledger may still say they are connected) and fails the running jobs of
// agents gone past the grace period.
func (m *Manager) sweep(ctx context.Context) {
	grace := m.gracePeriod()
	now := m.clock.Now()
	var lost, stale []string
	m.mu.Lock()
	for host, since := range m.gone {
		if now.Sub(since) > grace {
			lost = append(lost, host)
		}
		if now.Sub(since) > missedHeartbeats*m.cfg.HeartbeatInterval {
			stale = append(stale, host)
		}
	}
	m.mu.Unlock()
	for _, host := range stale {
		if h, ok := m.ledger.Host(host); ok && h.GetConnected() && !m.Connected(host) {
			cmd := &ledgerv1.Command{Op: &ledgerv1.Command_SetHostConnected{
				SetHostConnected: &ledgerv1.SetHostConnected{Name: host, Connected: false}}}
			if err := m.propose(ctx, cmd); err != nil {
				m.log.Warn("record host disconnected", "host", host, "err", err)
			}
		}
	}
	m.failLost(ctx, lost, grace)
}

func (m *Manager) failLost(ctx context.Context, lost []string, grace time.Duration) {
	for _, host := range lost {
		for _, j := range m.ledger.Jobs(ledger.JobFilter{State: stateRunning}) {
			if HostName(j.GetAssignedHost()) != host {
				continue
			}
			reason := fmt.Sprintf("%s: %s was unreachable longer than the grace period of %s", ReasonAgentLost, host, grace)
			cmd := &ledgerv1.Command{Op: &ledgerv1.Command_FinishMigrationJob{FinishMigrationJob: &ledgerv1.FinishMigrationJob{
				Name: j.GetName(), Epoch: j.GetEpoch(), State: ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED, Reason: reason}}}
			if err := m.propose(ctx, cmd); err != nil {
				m.log.Warn("fail job of lost agent", "host", host, "job", j.GetName(), "err", err)
				continue
			}
			m.log.Warn("job failed: agent lost", "host", host, "job", j.GetName(), "epoch", j.GetEpoch())
			m.owedCleanup(ctx, j, reason)
		}
	}
}

// refreshHosts writes the connected hosts' latest facts to the ledger in
// one command, which also refreshes their last-seen time: a new leader
// starts counting an agent's absence from it.
func (m *Manager) refreshHosts(ctx context.Context) {
	var cmds []*ledgerv1.Command
	m.mu.Lock()
	for _, s := range m.sessions {
		if !s.welcomed.Load() {
			continue
		}
		h := s.record()
		h.Connected = true
		cmds = append(cmds, &ledgerv1.Command{Op: &ledgerv1.Command_PutHost{PutHost: &ledgerv1.PutHost{Host: h}}})
	}
	m.mu.Unlock()
	if len(cmds) == 0 {
		return
	}
	batch := &ledgerv1.Command{Op: &ledgerv1.Command_Batch{Batch: &ledgerv1.Batch{Commands: cmds}}}
	if err := m.propose(ctx, batch); err != nil {
		m.log.Warn("refresh connected hosts", "hosts", len(cmds), "err", err)
	}
}
