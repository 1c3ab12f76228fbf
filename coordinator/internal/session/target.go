package session

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// targetRelay remembers the TargetWork sent to target hosts' agents, by
// request ID, until their results come back to be relayed to the
// migration server's agent that asked (docs/placement.md).
type targetRelay struct {
	mu      sync.Mutex
	pending map[string]relayed
}

type relayed struct {
	from       *session
	to         *session
	job        string
	epoch      int64
	action     agentv1.TargetAction
	targetHost string
}

func (r *targetRelay) put(id string, p relayed) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pending == nil {
		r.pending = map[string]relayed{}
	}
	r.pending[id] = p
}

// takeTo removes and returns the requests relayed to the session to.
func (r *targetRelay) takeTo(to *session) map[string]relayed {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]relayed{}
	for id, p := range r.pending {
		if p.to == to {
			out[id] = p
			delete(r.pending, id)
		}
	}
	return out
}

func (r *targetRelay) take(id string) (relayed, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, ok := r.pending[id]
	delete(r.pending, id)
	return p, ok
}

// targetRequest relays a migration server's agent's request for its job's
// target host to that host's agent, after checking the assignment is the
// job's current one on the asking host. A request the leader cannot relay
// is answered at once with why.
func (m *Manager) targetRequest(ctx context.Context, s *session, req *agentv1.TargetRequest) error {
	work, target, why := m.targetWork(s, req)
	if why == "" && target == nil {
		return m.pendRollback(ctx, s, req, work)
	}
	if why != "" {
		m.log.Info("target request refused", "host", s.host, "job", req.GetJob(), "epoch", req.GetEpoch(), "action", req.GetAction(), "reason", why)
		return s.send(ctx, targetAnswer(&agentv1.TargetWorkResult{RequestId: req.GetRequestId(), Job: req.GetJob(), Epoch: req.GetEpoch(),
			Action: req.GetAction(), Error: why}))
	}
	m.targets.put(req.GetRequestId(), relayed{from: s, to: target, job: req.GetJob(), epoch: req.GetEpoch(), action: req.GetAction(),
		targetHost: target.host})
	m.log.Debug("target request relayed", "from", s.host, "to", target.host, "job", req.GetJob(), "action", req.GetAction())
	if err := target.send(ctx, &agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_TargetWork{TargetWork: work}}); err != nil {
		m.targets.take(req.GetRequestId())
		return s.send(ctx, targetAnswer(&agentv1.TargetWorkResult{RequestId: req.GetRequestId(), Job: req.GetJob(), Epoch: req.GetEpoch(),
			Action: req.GetAction(), Error: fmt.Sprintf("target host %s: %v", target.host, err)}))
	}
	return nil
}

// targetWork builds the work of a request, or says why it cannot.
func (m *Manager) targetWork(s *session, req *agentv1.TargetRequest) (*agentv1.TargetWork, *session, string) {
	j, ok := m.ledger.Job(req.GetJob())
	rollback := req.GetAction() == agentv1.TargetAction_TARGET_ACTION_ROLLBACK
	switch {
	case !ok:
		return nil, nil, "job no longer exists"
	case j.GetState() != stateRunning && !rollback: // a failed or cancelled job is rolled back after it ended
		return nil, nil, "job is " + j.GetState().String()
	case j.GetEpoch() != req.GetEpoch() || HostName(j.GetAssignedHost()) != s.host:
		return nil, nil, fmt.Sprintf("assignment superseded: job runs under epoch %d on %s", j.GetEpoch(), j.GetAssignedHost())
	case j.GetTargetHost() == "" || HostName(j.GetTargetHost()) == s.host:
		return nil, nil, "the job's VM is placed on the migration server's own host"
	case req.GetAction() == agentv1.TargetAction_TARGET_ACTION_UNSPECIFIED:
		return nil, nil, "no action"
	}
	target := m.session(HostName(j.GetTargetHost()))
	if target == nil || !target.welcomed.Load() {
		if !rollback {
			return nil, nil, fmt.Sprintf("target host %s is not connected", j.GetTargetHost())
		}
		target = nil // the rollback waits for the host: pendRollback
	}
	work := &agentv1.TargetWork{RequestId: req.GetRequestId(), Action: req.GetAction(), Job: j, Epoch: j.GetEpoch(),
		PeerHost: s.host, SourceVm: req.GetSourceVm(), Nvram: req.GetNvram()}
	if ps, ok := m.ledger.PrimaryStorage(j.GetTarget().GetPrimaryStorage()); ok {
		work.PrimaryStorage = ps
	}
	for _, nic := range j.GetTarget().GetNics() {
		if n, ok := m.ledger.L3Network(nic.GetL3Network()); ok && !hasNetwork(work.L3Networks, n.GetName()) {
			work.L3Networks = append(work.L3Networks, n)
		}
	}
	if ms, ok := m.ledger.MigrationServer(j.GetMigrationServer()); ok {
		work.MigrationCidr = ms.GetMigrationCidr()
	}
	return work, target, ""
}

// pendRollback records the rollback a disconnected target host owes a job
// in the ledger, to be sent when its agent returns, and tells the
// migration server's agent so.
func (m *Manager) pendRollback(ctx context.Context, s *session, req *agentv1.TargetRequest, work *agentv1.TargetWork) error {
	host := HostName(work.GetJob().GetTargetHost())
	reason := fmt.Sprintf("the job was rolled back while %s was disconnected", host)
	cmd := &ledgerv1.Command{Op: &ledgerv1.Command_SetPendingCleanup{SetPendingCleanup: &ledgerv1.SetPendingCleanup{
		Host: host, Job: req.GetJob(), Cleanup: &ferryv1.PendingCleanup{Epoch: req.GetEpoch(), Target: work.GetJob().GetTarget(),
			PrimaryStorage: work.GetPrimaryStorage(), Reason: reason}}}}
	res := &agentv1.TargetWorkResult{RequestId: req.GetRequestId(), Job: req.GetJob(), Epoch: req.GetEpoch(), Action: req.GetAction()}
	if err := m.propose(ctx, cmd); err != nil {
		res.Error = fmt.Sprintf("record the rollback pending on %s: %v", host, err)
	} else {
		res.Warnings = []string{fmt.Sprintf("target host %s is not connected: its domain and volumes are removed when its agent returns (pending cleanup)", host)}
		m.log.Info("rollback pending on a disconnected target host", "host", host, "job", req.GetJob(), "epoch", req.GetEpoch())
	}
	return s.send(ctx, targetAnswer(res))
}

// cleanupPrefix marks the request IDs of pending cleanups the leader
// sends itself.
const cleanupPrefix = "cleanup:"

// sendPendingCleanups sends a returning agent the rollbacks its host owes.
func (m *Manager) sendPendingCleanups(ctx context.Context, s *session) error {
	h, ok := m.ledger.Host(s.host)
	if !ok {
		return nil
	}
	for _, c := range h.GetPendingCleanups() {
		work := &agentv1.TargetWork{RequestId: cleanupPrefix + c.GetJob(), Action: agentv1.TargetAction_TARGET_ACTION_ROLLBACK,
			Job: &ferryv1.MigrationJob{Name: c.GetJob(), Target: c.GetTarget(), TargetHost: s.host}, Epoch: c.GetEpoch(),
			PrimaryStorage: c.GetPrimaryStorage()}
		for _, nic := range c.GetTarget().GetNics() {
			if n, ok := m.ledger.L3Network(nic.GetL3Network()); ok && !hasNetwork(work.L3Networks, n.GetName()) {
				work.L3Networks = append(work.L3Networks, n)
			}
		}
		m.log.Info("sending a pending cleanup", "host", s.host, "job", c.GetJob(), "epoch", c.GetEpoch())
		if err := s.send(ctx, &agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_TargetWork{TargetWork: work}}); err != nil {
			return err
		}
	}
	return nil
}

// owedCleanup records that the target host of a job whose migration
// server's agent was lost owes the job a rollback (nobody else will undo
// its volumes and domain there), and sends it at once when that host's
// agent is connected; otherwise it goes on the agent's next hello.
func (m *Manager) owedCleanup(ctx context.Context, j *ferryv1.MigrationJob, reason string) {
	th := j.GetTargetHost()
	if th == "" || HostName(th) == HostName(j.GetAssignedHost()) {
		return
	}
	host := HostName(th)
	c := &ferryv1.PendingCleanup{Epoch: j.GetEpoch(), Target: j.GetTarget(), Reason: reason}
	if ps, ok := m.ledger.PrimaryStorage(j.GetTarget().GetPrimaryStorage()); ok {
		c.PrimaryStorage = ps
	}
	cmd := &ledgerv1.Command{Op: &ledgerv1.Command_SetPendingCleanup{SetPendingCleanup: &ledgerv1.SetPendingCleanup{Host: host, Job: j.GetName(), Cleanup: c}}}
	if err := m.propose(ctx, cmd); err != nil {
		m.log.Warn("record a pending cleanup", "host", host, "job", j.GetName(), "err", err)
		return
	}
	if s := m.session(host); s != nil && s.welcomed.Load() {
		if err := m.sendPendingCleanups(ctx, s); err != nil {
			m.log.Warn("send pending cleanups", "host", host, "err", err)
		}
	}
}

// cleanupDone clears a pending cleanup its host's agent carried out.
func (m *Manager) cleanupDone(ctx context.Context, s *session, res *agentv1.TargetWorkResult) error {
	job := strings.TrimPrefix(res.GetRequestId(), cleanupPrefix)
	if res.GetError() != "" {
		m.log.Warn("pending cleanup failed; it is sent again when the agent returns", "host", s.host, "job", job, "err", res.GetError())
		return nil
	}
	cmd := &ledgerv1.Command{Op: &ledgerv1.Command_SetPendingCleanup{SetPendingCleanup: &ledgerv1.SetPendingCleanup{Host: s.host, Job: job}}}
	if err := m.propose(ctx, cmd); err != nil {
		m.log.Warn("clear a pending cleanup", "host", s.host, "job", job, "err", err)
		return nil
	}
	m.log.Info("pending cleanup done", "host", s.host, "job", job)
	return nil
}

func hasNetwork(ns []*ferryv1.L3Network, name string) bool {
	for _, n := range ns {
		if n.GetName() == name {
			return true
		}
	}
	return false
}

// targetResult relays a target host's agent's result to the agent that
// asked, when it came from the host the request went to.
func (m *Manager) targetResult(ctx context.Context, s *session, res *agentv1.TargetWorkResult) error {
	if strings.HasPrefix(res.GetRequestId(), cleanupPrefix) {
		return m.cleanupDone(ctx, s, res)
	}
	p, ok := m.targets.take(res.GetRequestId())
	if !ok || p.targetHost != s.host || p.job != res.GetJob() {
		m.log.Warn("target result of no relayed request", "host", s.host, "job", res.GetJob(), "request", res.GetRequestId())
		return nil
	}
	if err := p.from.send(ctx, targetAnswer(res)); err != nil {
		m.log.Warn("relay target result", "to", p.from.host, "job", res.GetJob(), "err", err)
	}
	return nil
}

// relayedGone answers, with an error, the requests relayed to a target
// host's session that has ended before their results came: the agents
// that asked try again (or give up) at once, instead of waiting for an
// answer that cannot come.
func (m *Manager) relayedGone(to *session) {
	for id, p := range m.targets.takeTo(to) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := p.from.send(ctx, targetAnswer(&agentv1.TargetWorkResult{RequestId: id, Job: p.job, Epoch: p.epoch, Action: p.action,
			Error: fmt.Sprintf("target host %s disconnected before it answered", p.targetHost)}))
		cancel()
		if err != nil {
			m.log.Warn("relay target host gone", "to", p.from.host, "job", p.job, "err", err)
		}
	}
}

func targetAnswer(res *agentv1.TargetWorkResult) *agentv1.ConnectResponse {
	return &agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_TargetAnswer{TargetAnswer: res}}
}
