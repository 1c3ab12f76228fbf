package session

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

const stateRunning = ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING

// progress publishes live progress and checkpoints it in the ledger when
// the phase changed or the checkpoint interval passed. Progress of another
// epoch than the ledger's is dropped.
func (m *Manager) progress(ctx context.Context, s *session, p *agentv1.JobProgress) error {
	if !m.assignedTo(s, p.GetJob()) {
		m.log.Warn("ignoring progress from a host the job is not assigned to", "host", s.host, "job", p.GetJob(), "epoch", p.GetEpoch())
		return nil
	}
	if !m.hub.Progress(p.GetJob(), p.GetEpoch(), p.GetDisks()) {
		m.log.Debug("dropping progress of a stale assignment", "host", s.host, "job", p.GetJob(), "epoch", p.GetEpoch())
		return nil
	}
	now := m.clock.Now()
	timings := m.phaseTimings(s, p.GetJob(), p.GetPhaseTimings())
	m.metered(p.GetJob(), p.GetEpoch(), timings, p.GetDisks(), false)
	s.mu.Lock()
	j, ok := s.jobs[p.GetJob()]
	if !ok || j.epoch != p.GetEpoch() {
		j = &liveJob{epoch: p.GetEpoch(), checkpoint: now}
		s.jobs[p.GetJob()] = j
	}
	// A phase that begins or ends is checkpointed at once, like a change
	// of the job's phase (UPLOADING begins beside CONVERTING).
	due := p.GetPhase() != ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_UNSPECIFIED && p.GetPhase() != j.phase ||
		now.Sub(j.checkpoint) >= m.cfg.CheckpointInterval || timingMarks(timings) != j.timings ||
		len(p.GetPrecopyRounds()) != j.rounds
	if due {
		j.phase, j.checkpoint, j.timings, j.rounds = p.GetPhase(), now, timingMarks(timings), len(p.GetPrecopyRounds())
	}
	s.mu.Unlock()
	if !due {
		return nil
	}
	cmd := &ledgerv1.Command{Op: &ledgerv1.Command_CheckpointMigrationJob{CheckpointMigrationJob: &ledgerv1.CheckpointMigrationJob{
		Name: p.GetJob(), Epoch: p.GetEpoch(), Phase: p.GetPhase(), Disks: p.GetDisks(), PhaseTimings: timings,
		PrecopyRounds: p.GetPrecopyRounds()}}}
	return m.refusable(m.propose(ctx, cmd), "checkpoint", s, p.GetJob(), p.GetEpoch())
}

// result ends a job with its agent's outcome. The ledger refuses results of
// a superseded assignment; they are logged and ignored.
func (m *Manager) result(ctx context.Context, s *session, r *agentv1.JobResult) error {
	s.untrack(r.GetJob(), r.GetEpoch())
	if !m.assignedTo(s, r.GetJob()) {
		m.log.Warn("ignoring a result from a host the job is not assigned to", "host", s.host, "job", r.GetJob())
		return nil
	}
	m.metered(r.GetJob(), r.GetEpoch(), r.GetPhaseTimings(), r.GetDisks(), true)
	state, reason := outcomeState(r)
	cmd := &ledgerv1.Command{Op: &ledgerv1.Command_FinishMigrationJob{FinishMigrationJob: &ledgerv1.FinishMigrationJob{
		Name: r.GetJob(), Epoch: r.GetEpoch(), State: state, Reason: reason, Warnings: r.GetWarnings(), Disks: r.GetDisks(),
		PhaseTimings: m.phaseTimings(s, r.GetJob(), r.GetPhaseTimings()), BootVerifiedBy: r.GetBootVerifiedBy(),
		PrecopyRounds: r.GetPrecopyRounds(), MeasuredDowntime: r.GetMeasuredDowntime(),
		GuestInspection: r.GetGuestInspection()}}}
	err := m.propose(ctx, cmd)
	if err == nil {
		m.log.Info("job finished", "host", s.host, "job", r.GetJob(), "epoch", r.GetEpoch(), "state", state, "reason", reason)
	}
	return m.refusable(err, "result", s, r.GetJob(), r.GetEpoch())
}

// metered tells the meter a report of job's assignment epoch.
func (m *Manager) metered(job string, epoch int64, timings []*ferryv1.PhaseTiming, disks []*ferryv1.DiskProgress, final bool) {
	if m.meter == nil {
		return
	}
	j, ok := m.ledger.Job(job)
	if !ok || j.GetEpoch() != epoch {
		return
	}
	m.meter.JobProgress(job, j.GetMigrationServer(), epoch, timings, disks, final)
}

// phaseTimings returns an agent's phase timings of job when the ledger can
// record them (ledger.CheckPhaseTimings), and none, with a warning, when it
// cannot: the rest of the report is recorded all the same.
func (m *Manager) phaseTimings(s *session, job string, ts []*ferryv1.PhaseTiming) []*ferryv1.PhaseTiming {
	if len(ts) == 0 {
		return nil
	}
	j, ok := m.ledger.Job(job)
	if !ok {
		return nil
	}
	if err := ledger.CheckPhaseTimings(j, ts); err != nil {
		m.log.Warn("dropping phase timings the ledger cannot record", "host", s.host, "job", job, "err", err)
		return nil
	}
	return ts
}

// timingMarks counts the phases begun and ended in ts.
func timingMarks(ts []*ferryv1.PhaseTiming) int {
	n := len(ts)
	for _, t := range ts {
		if t.GetEndTime() != nil {
			n++
		}
	}
	return n
}

// assignedTo says whether job exists and is assigned to s's host. Reports
// about any other job (another host's, or one that is gone) are dropped.
func (m *Manager) assignedTo(s *session, job string) bool {
	host, ok := m.ledger.AssignedHost(job)
	return ok && HostName(host) == s.host
}

func outcomeState(r *agentv1.JobResult) (ferryv1.MigrationJobState, string) {
	switch r.GetOutcome() {
	case agentv1.JobOutcome_JOB_OUTCOME_SUCCEEDED:
		return ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED, r.GetReason()
	case agentv1.JobOutcome_JOB_OUTCOME_CANCELLED:
		return ferryv1.MigrationJobState_MIGRATION_JOB_STATE_CANCELLED, r.GetReason()
	case agentv1.JobOutcome_JOB_OUTCOME_FAILED:
		return ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED, r.GetReason()
	default:
		return ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED, "agent reported no outcome: " + r.GetReason()
	}
}

// refusable ends the session on a failed ledger write, unless the ledger
// refused the report itself (a stale epoch, a job deleted meanwhile).
func (m *Manager) refusable(err error, what string, s *session, job string, epoch int64) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ledger.ErrStaleEpoch), errors.Is(err, ledger.ErrNotFound), errors.Is(err, ledger.ErrFailedPrecondition):
		m.log.Info("ignoring "+what+" the ledger refused", "host", s.host, "job", job, "epoch", epoch, "err", err)
		return nil
	default:
		return fmt.Errorf("record %s of %s: %w", what, job, err)
	}
}

// reconcile answers the jobs an agent holds when it says hello: a job whose
// assignment is current keeps running; a stale or finished one is
// cancelled. A job the ledger runs on this host that the agent does not
// hold (its assignment was lost in transit) is assigned again.
func (m *Manager) reconcile(ctx context.Context, s *session, held []*agentv1.HeldJob) error {
	now := m.clock.Now()
	holds := map[string]bool{}
	for _, h := range held {
		holds[h.GetJob()] = true
		j, ok := m.ledger.Job(h.GetJob())
		reason := ""
		switch {
		case !ok:
			reason = "job no longer exists"
		case j.GetState() != stateRunning:
			reason = "job is " + j.GetState().String()
		case j.GetEpoch() != h.GetEpoch() || HostName(j.GetAssignedHost()) != s.host:
			reason = fmt.Sprintf("assignment superseded: job runs under epoch %d on %s", j.GetEpoch(), j.GetAssignedHost())
		}
		if reason == "" {
			s.track(h.GetJob(), h.GetEpoch(), h.GetPhase(), now)
			continue
		}
		m.log.Info("cancelling a job the agent holds", "host", s.host, "job", h.GetJob(), "epoch", h.GetEpoch(), "reason", reason)
		if err := s.send(ctx, cancellation(h.GetJob(), h.GetEpoch(), reason)); err != nil {
			return err
		}
	}
	for _, j := range m.ledger.Jobs(ledger.JobFilter{State: stateRunning}) {
		if holds[j.GetName()] || HostName(j.GetAssignedHost()) != s.host {
			continue
		}
		m.log.Info("assigning again a job the agent does not hold", "host", s.host, "job", j.GetName(), "epoch", j.GetEpoch())
		a, err := m.Assignment(j, j.GetEpoch())
		if err != nil {
			m.log.Warn("cannot prepare assignment", "job", j.GetName(), "err", err)
			continue
		}
		if err := m.assign(ctx, s, a); err != nil {
			return err
		}
	}
	return nil
}

func cancellation(job string, epoch int64, reason string) *agentv1.ConnectResponse {
	return &agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_Cancellation{Cancellation: &agentv1.Cancellation{
		Job: job, Epoch: epoch, Reason: reason}}}
}

// Assign hands a to host's agent. It returns once the assignment is queued
// on the session, or ErrNotConnected when the host has no session here.
func (m *Manager) Assign(ctx context.Context, host string, a *agentv1.Assignment) error {
	s := m.session(HostName(host))
	if s == nil || !s.welcomed.Load() {
		return fmt.Errorf("assign %s to %s: %w", a.GetJob().GetName(), host, ErrNotConnected)
	}
	return m.assign(ctx, s, a)
}

func (m *Manager) assign(ctx context.Context, s *session, a *agentv1.Assignment) error {
	if err := s.mayReceive(a.GetJob().GetAssignedHost()); err != nil {
		return fmt.Errorf("assign %s: %w", a.GetJob().GetName(), err)
	}
	s.track(a.GetJob().GetName(), a.GetEpoch(), ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONVERTING, m.clock.Now())
	msg := &agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_Assignment{Assignment: a}}
	if err := s.send(ctx, msg); err != nil {
		s.untrack(a.GetJob().GetName(), a.GetEpoch())
		return fmt.Errorf("assign %s to %s: %w", a.GetJob().GetName(), s.host, err)
	}
	m.limitsAfterAssign(ctx, s, a)
	return nil
}

// Assignment prepares everything an agent needs to run job under epoch:
// the job itself, its source, migration server, primary storage, L3
// networks and the unsealed secrets of the source's credentials. The
// result holds secrets: never log it.
func (m *Manager) Assignment(job *ferryv1.MigrationJob, epoch int64) (*agentv1.Assignment, error) {
	a := &agentv1.Assignment{Job: proto.Clone(job).(*ferryv1.MigrationJob), Epoch: epoch}
	var ok bool
	if a.Source, ok = m.ledger.Source(job.GetSource()); !ok {
		return nil, fmt.Errorf("source %s: %w", job.GetSource(), ledger.ErrNotFound)
	}
	if a.MigrationServer, ok = m.ledger.MigrationServer(job.GetMigrationServer()); !ok {
		return nil, fmt.Errorf("migration server %s: %w", job.GetMigrationServer(), ledger.ErrNotFound)
	}
	if ps := job.GetTarget().GetPrimaryStorage(); ps != "" {
		if a.PrimaryStorage, ok = m.ledger.PrimaryStorage(ps); !ok {
			return nil, fmt.Errorf("primary storage %s: %w", ps, ledger.ErrNotFound)
		}
	}
	seen := map[string]bool{}
	for _, nic := range job.GetTarget().GetNics() {
		name := nic.GetL3Network()
		if name == "" || seen[name] {
			continue
		}
		seen[name] = true
		n, ok := m.ledger.L3Network(name)
		if !ok {
			return nil, fmt.Errorf("L3 network %s: %w", name, ledger.ErrNotFound)
		}
		a.L3Networks = append(a.L3Networks, n)
	}
	secrets, err := m.secretsOf(a.Source)
	if err != nil {
		return nil, err
	}
	a.Secrets = secrets
	if err := m.exportSecrets(job, a); err != nil {
		return nil, err
	}
	a.GuestShutdownTimeout = durationpb.New(m.guestShutdownTimeout())
	return a, nil
}

// exportSecrets gives an export job's assignment the password of an SMB
// destination's credential. The bundle signing key is not in it: the
// agent asks the leader to sign the manifest (signBundle).
func (m *Manager) exportSecrets(job *ferryv1.MigrationJob, a *agentv1.Assignment) error {
	e := job.GetExport()
	if e == nil {
		return nil
	}
	if cred := e.GetDestination().GetCredential(); cred != "" {
		secret, err := m.unseal(cred)
		if err != nil {
			return err
		}
		if a.Secrets == nil {
			a.Secrets = map[string]string{}
		}
		a.Secrets[cred] = secret
	}
	return nil
}

func credentialsOf(s *ferryv1.Source) []string {
	var out []string
	for _, c := range []string{s.GetVcenter().GetCredential(), s.GetKvm().GetCredential(), s.GetKvm().GetSaslCredential()} {
		if c != "" {
			out = append(out, c)
		}
	}
	return out
}

func (m *Manager) unseal(name string) (string, error) {
	c, ok := m.ledger.Credential(name)
	if !ok {
		return "", fmt.Errorf("credential %s: %w", name, ledger.ErrNotFound)
	}
	if m.seal == nil {
		return "", fmt.Errorf("credential %s: this coordinator has no sealing key", name)
	}
	plain, err := m.seal.Open(c.GetSealedSecret(), []byte(name))
	if err != nil {
		return "", fmt.Errorf("unseal credential %s: %w", name, err)
	}
	return string(plain), nil
}
