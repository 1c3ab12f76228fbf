package session

import (
	"context"
	"fmt"
	"sync"

	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
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
	job        string
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
	if why != "" {
		m.log.Info("target request refused", "host", s.host, "job", req.GetJob(), "epoch", req.GetEpoch(), "action", req.GetAction(), "reason", why)
		return s.send(ctx, targetAnswer(&agentv1.TargetWorkResult{RequestId: req.GetRequestId(), Job: req.GetJob(), Epoch: req.GetEpoch(),
			Action: req.GetAction(), Error: why}))
	}
	m.targets.put(req.GetRequestId(), relayed{from: s, job: req.GetJob(), targetHost: target.host})
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
	switch {
	case !ok:
		return nil, nil, "job no longer exists"
	case j.GetState() != stateRunning:
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
		return nil, nil, fmt.Sprintf("target host %s is not connected", j.GetTargetHost())
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

func targetAnswer(res *agentv1.TargetWorkResult) *agentv1.ConnectResponse {
	return &agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_TargetAnswer{TargetAnswer: res}}
}
