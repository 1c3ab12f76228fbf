package session

import (
	"context"
	"fmt"

	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// linearizer is what the Raft node offers for reads that must see every
// write acknowledged before them (consensus.Node.LinearizableRead).
type linearizer interface {
	LinearizableRead(ctx context.Context) error
}

// writesFor reports whether host may write a target of job j: the host
// running it (the migration server's), or the host its VM is placed on
// (MigrationJob.target_host), whose agent creates the volumes and the
// domain there (docs/placement.md).
func writesFor(j *ferryv1.MigrationJob, host string) bool {
	return HostName(j.GetAssignedHost()) == host || (j.GetTargetHost() != "" && HostName(j.GetTargetHost()) == host)
}

// currentTargetHost is the job's current target host (hosts/{name}): its
// target_host, or the host running it when the VM is placed there.
func currentTargetHost(j *ferryv1.MigrationJob) string {
	if j.GetTargetHost() != "" {
		return HostName(j.GetTargetHost())
	}
	return HostName(j.GetAssignedHost())
}

// fence answers whether an agent's assignment is still the job's current
// one, before the agent writes a target or undoes what it wrote
// (FenceCheck.undo). The ledger is read linearizably
// first, so a job a previous leader failed or reassigned is seen as such.
// When that read fails (this node lost the lead) no answer is sent: the
// agent asks again, on this or the next leader's session.
func (m *Manager) fence(ctx context.Context, s *session, fc *agentv1.FenceCheck) error {
	if l, ok := m.raft.(linearizer); ok {
		rctx, cancel := context.WithTimeout(ctx, m.cfg.ProposeTimeout)
		err := l.LinearizableRead(rctx)
		cancel()
		if err != nil {
			m.log.Warn("cannot confirm an assignment before a target write", "host", s.host, "job", fc.GetJob(),
				"epoch", fc.GetEpoch(), "err", err)
			return nil
		}
	}
	ans := &agentv1.FenceAnswer{RequestId: fc.GetRequestId(), Current: true}
	j, ok := m.ledger.Job(fc.GetJob())
	switch {
	case fc.GetUndo():
		// A rollback: the job may have ended (that is why it is undone).
		// Only a newer assignment whose target is on the host the undo
		// would clean owns what is there now; one placed elsewhere (a
		// restart that moved the job) leaves the old host's target to
		// this undo.
		undoHost := s.host
		if fc.GetTargetHost() != "" {
			undoHost = HostName(fc.GetTargetHost())
		}
		switch {
		case !ok:
		case j.GetEpoch() == fc.GetEpoch() && !writesFor(j, s.host):
			ans.Current, ans.Reason = false, fmt.Sprintf("assignment superseded: job runs under epoch %d on %s", j.GetEpoch(), j.GetAssignedHost())
		case j.GetEpoch() != fc.GetEpoch() && currentTargetHost(j) == undoHost:
			ans.Current, ans.Reason = false, fmt.Sprintf("assignment superseded: job runs under epoch %d with its target on %s", j.GetEpoch(), undoHost)
		}
	case !ok:
		ans.Current, ans.Reason = false, "job no longer exists"
	case j.GetState() != stateRunning:
		ans.Current, ans.Reason = false, "job is "+j.GetState().String()
	case j.GetEpoch() != fc.GetEpoch() || !writesFor(j, s.host):
		ans.Current, ans.Reason = false, fmt.Sprintf("assignment superseded: job runs under epoch %d on %s", j.GetEpoch(), j.GetAssignedHost())
	}
	if ans.Current {
		m.log.Debug("assignment confirmed before a target write", "host", s.host, "job", fc.GetJob(), "epoch", fc.GetEpoch(), "write", fc.GetWrite())
	} else {
		m.log.Info("refused a target write of a stale assignment", "host", s.host, "job", fc.GetJob(), "epoch", fc.GetEpoch(),
			"write", fc.GetWrite(), "reason", ans.Reason)
	}
	return s.send(ctx, &agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_FenceAnswer{FenceAnswer: ans}})
}
