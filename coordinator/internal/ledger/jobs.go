package ledger

import (
	"fmt"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

const (
	stateQueued    = ferryv1.MigrationJobState_MIGRATION_JOB_STATE_QUEUED
	stateRunning   = ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING
	stateSucceeded = ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED
	stateFailed    = ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED
	stateCancelled = ferryv1.MigrationJobState_MIGRATION_JOB_STATE_CANCELLED
)

// Terminal says whether a job in state s is finished.
func Terminal(s ferryv1.MigrationJobState) bool {
	return s == stateSucceeded || s == stateFailed || s == stateCancelled
}

// JobFilter selects jobs; empty fields match everything.
type JobFilter struct {
	State           ferryv1.MigrationJobState
	MigrationServer string
	Source          string
	Host            string
}

func (f JobFilter) match(j *ferryv1.MigrationJob) bool {
	return (f.State == ferryv1.MigrationJobState_MIGRATION_JOB_STATE_UNSPECIFIED || j.GetState() == f.State) &&
		(f.MigrationServer == "" || j.GetMigrationServer() == f.MigrationServer) &&
		(f.Source == "" || j.GetSource() == f.Source) &&
		(f.Host == "" || j.GetAssignedHost() == f.Host)
}

// Job returns a copy of the named job.
func (l *Ledger) Job(name string) (*ferryv1.MigrationJob, bool) { return get(l, l.jobs, name) }

// AssignedHost returns the host a job is assigned to ("" when none), and
// whether the job exists, without copying the job: the agent sessions ask
// it of every progress report.
func (l *Ledger) AssignedHost(name string) (string, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	j, ok := l.jobs[name]
	return j.GetAssignedHost(), ok
}

// Jobs lists the jobs f selects, by name.
func (l *Ledger) Jobs(f JobFilter) []*ferryv1.MigrationJob {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return filtered(l.jobsIn(f), f.match)
}

// jobsIn is where the jobs f selects are: the jobs in its state when it
// names one (a look at the running jobs does not walk 10,000 finished
// ones), else all. The caller holds the lock.
func (l *Ledger) jobsIn(f JobFilter) map[string]*ferryv1.MigrationJob {
	if f.State == ferryv1.MigrationJobState_MIGRATION_JOB_STATE_UNSPECIFIED {
		return l.jobs
	}
	return l.byState[f.State]
}

// VisitJobs calls visit with each job f selects, in no order, until visit
// returns false. It does not copy: visit must neither keep nor change the
// job, and must not call back into the ledger. It is for hot paths that
// read a few fields of many jobs (the scheduler); everyone else uses Jobs.
func (l *Ledger) VisitJobs(f JobFilter, visit func(*ferryv1.MigrationJob) bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	for _, j := range l.jobsIn(f) {
		if f.match(j) && !visit(j) {
			return
		}
	}
}

// CreateMigrationJobs adds queued jobs, all or none. A repeated request ID
// returns the names the first request created.
func (l *Ledger) CreateMigrationJobs(c *ledgerv1.CreateMigrationJobs, now time.Time) ([]string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if names, ok := l.seenRequest(c.GetRequestId()); ok {
		return names, nil
	}
	taken := map[string]string{}
	for _, j := range c.GetJobs() {
		if err := l.checkNewJob(j, taken); err != nil {
			return nil, err
		}
	}
	names := make([]string, 0, len(c.GetJobs()))
	for _, j := range c.GetJobs() {
		j.State = stateQueued
		j.CreateTime = timestamppb.New(now)
		j.UpdateTime = j.CreateTime
		l.jobs[j.GetName()] = j
		l.indexJob(j, true)
		l.stored(nil, j)
		names = append(names, j.GetName())
		l.notify(j, false)
		l.jobStateChanged(ferryv1.MigrationJobState_MIGRATION_JOB_STATE_UNSPECIFIED, j, now)
	}
	l.recordRequest(c.GetRequestId(), names, now)
	return names, nil
}

func (l *Ledger) checkNewJob(j *ferryv1.MigrationJob, taken map[string]string) error {
	if _, ok := l.jobs[j.GetName()]; ok {
		return fmt.Errorf("%s: %w", j.GetName(), ErrExists)
	}
	if _, ok := l.servers[j.GetMigrationServer()]; !ok {
		return fmt.Errorf("migration server %s: %w", j.GetMigrationServer(), ErrNotFound)
	}
	if _, ok := l.sources[j.GetSource()]; !ok {
		return fmt.Errorf("source %s: %w", j.GetSource(), ErrNotFound)
	}
	for _, nic := range j.GetTarget().GetNics() {
		if nic.GetIp() == "" {
			continue
		}
		key := nic.GetL3Network() + "|" + nic.GetIp()
		owner, dup := taken[key]
		if !dup {
			owner, dup = l.holder(nic.GetL3Network(), nic.GetIp(), "")
		}
		if dup {
			return fmt.Errorf("%w: address %s on %s is already held by job %s", ErrFailedPrecondition, nic.GetIp(), nic.GetL3Network(), owner)
		}
		taken[key] = j.GetName()
	}
	return nil
}

// StartMigrationJob hands a queued job to a host under a new epoch.
func (l *Ledger) StartMigrationJob(c *ledgerv1.StartMigrationJob, now time.Time) error {
	return l.updateJob(c.GetName(), now, func(j *ferryv1.MigrationJob) error {
		if j.GetState() != stateQueued {
			return fmt.Errorf("%w: job %s is %s, not QUEUED", ErrFailedPrecondition, j.GetName(), j.GetState())
		}
		if c.GetEpoch() <= j.GetEpoch() {
			return fmt.Errorf("job %s epoch %d after %d: %w", j.GetName(), c.GetEpoch(), j.GetEpoch(), ErrStaleEpoch)
		}
		j.State = stateRunning
		j.Phase = ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONVERTING
		j.Epoch = c.GetEpoch()
		j.AssignedHost = c.GetHost()
		j.Attempt++
		j.WaitingReason = ""
		j.StartTime = timestamppb.New(now)
		j.EndTime, j.Duration = nil, nil
		j.PhaseTimings = nil // they describe one attempt
		j.BootVerified, j.BootVerifiedBy = false, ""
		j.PrecopyRounds, j.MeasuredDowntime = nil, nil
		j.GuestInspection = nil
		return nil
	})
}

// CheckpointMigrationJob records the phase and progress of a running job.
func (l *Ledger) CheckpointMigrationJob(c *ledgerv1.CheckpointMigrationJob, now time.Time) error {
	return l.updateJob(c.GetName(), now, func(j *ferryv1.MigrationJob) error {
		if err := current(j, c.GetEpoch()); err != nil {
			return err
		}
		if c.GetPhase() != ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_UNSPECIFIED {
			j.Phase = c.GetPhase()
		}
		if len(c.GetDisks()) > 0 {
			j.Disks = c.GetDisks()
		}
		setPhaseTimings(j, c.GetPhaseTimings())
		setRounds(j, c.GetPrecopyRounds())
		return nil
	})
}

// FinishMigrationJob ends a running job with the agent's result.
func (l *Ledger) FinishMigrationJob(c *ledgerv1.FinishMigrationJob, now time.Time) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	j, ok := l.jobs[c.GetName()]
	if !ok {
		return fmt.Errorf("job %s: %w", c.GetName(), ErrNotFound)
	}
	if err := current(j, c.GetEpoch()); err != nil {
		return err
	}
	if !Terminal(c.GetState()) {
		return fmt.Errorf("%w: job %s cannot finish as %s", ErrFailedPrecondition, c.GetName(), c.GetState())
	}
	j = clone(j)
	j.Warnings = c.GetWarnings()
	if len(c.GetDisks()) > 0 {
		j.Disks = c.GetDisks()
	}
	setPhaseTimings(j, c.GetPhaseTimings())
	setRounds(j, c.GetPrecopyRounds())
	if c.GetState() == stateSucceeded && c.GetMeasuredDowntime() != nil {
		j.MeasuredDowntime = c.GetMeasuredDowntime()
	}
	j.Verified = c.GetState() == stateSucceeded && allVerified(j)
	j.BootVerified, j.BootVerifiedBy = false, ""
	if c.GetState() == stateSucceeded && j.GetOptions().GetVerifyBoot() && c.GetBootVerifiedBy() != "" {
		j.BootVerified, j.BootVerifiedBy = true, c.GetBootVerifiedBy()
	}
	j.GuestInspection = nil
	if c.GetState() == stateSucceeded {
		j.GuestInspection = c.GetGuestInspection()
	}
	l.finish(j, c.GetState(), c.GetReason(), now)
	return nil
}

// allVerified says whether every disk the job keeps was read back from
// the target and matched the source's checksums.
func allVerified(j *ferryv1.MigrationJob) bool {
	want := j.GetTarget().GetDisks()
	if len(want) == 0 {
		return false
	}
	verified := map[string]bool{}
	for _, d := range j.GetDisks() {
		if d.GetVerified() {
			verified[d.GetSourceDisk()] = true
		}
	}
	for _, d := range want {
		if !verified[d.GetSourceDisk()] {
			return false
		}
	}
	return true
}

// current checks that a report belongs to the job's live assignment.
func current(j *ferryv1.MigrationJob, epoch int64) error {
	if epoch != j.GetEpoch() {
		return fmt.Errorf("job %s epoch %d, current %d: %w", j.GetName(), epoch, j.GetEpoch(), ErrStaleEpoch)
	}
	if j.GetState() != stateRunning {
		return fmt.Errorf("job %s is %s: %w", j.GetName(), j.GetState(), ErrStaleEpoch)
	}
	return nil
}

// CancelMigrationJob cancels a queued or running job.
func (l *Ledger) CancelMigrationJob(c *ledgerv1.CancelMigrationJob, now time.Time) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.cancelJobRefusal(c.GetName()); err != nil {
		return err
	}
	j := l.jobs[c.GetName()]
	reason := c.GetReason()
	if reason == "" {
		reason = "cancelled by request"
	}
	l.finish(clone(j), stateCancelled, reason, now)
	return nil
}

// RestartMigrationJob queues a failed or cancelled job again, on the host
// the leader placed it on again when the command names one.
func (l *Ledger) RestartMigrationJob(c *ledgerv1.RestartMigrationJob, now time.Time) error {
	return l.updateJob(c.GetName(), now, func(j *ferryv1.MigrationJob) error {
		if err := l.restartJobRefusal(j); err != nil {
			return err
		}
		if c.GetTargetHost() != "" {
			j.TargetHost, j.PlacementReason = c.GetTargetHost(), c.GetPlacementReason()
		}
		if gc := c.GetGuestConversion(); gc != ferryv1.GuestConversion_GUEST_CONVERSION_UNSPECIFIED {
			if j.Options == nil {
				j.Options = &ferryv1.MigrationOptions{}
			}
			j.Options.GuestConversion = gc
		}
		j.State = stateQueued
		j.Phase = ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_UNSPECIFIED
		j.Reason, j.WaitingReason, j.Warnings, j.Verified = "", "", nil, false
		j.BootVerified, j.BootVerifiedBy = false, ""
		j.GuestInspection = nil
		j.EndTime, j.Duration = nil, nil
		return nil
	})
}

// DeleteMigrationJob deletes a finished job.
//
// A succeeded job's VM keeps the addresses it was given (and the DHCP host
// entries recorded for them), so they move to their L3 networks as
// reservations, out of the pool until the network is deleted.
func (l *Ledger) DeleteMigrationJob(name string, now time.Time) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.deleteJobRefusal(name); err != nil {
		return err
	}
	j := l.jobs[name]
	if j.GetState() == stateSucceeded {
		l.reserveAddresses(j, now)
	}
	delete(l.jobs, name)
	l.indexJob(j, false)
	l.stored(j, nil)
	l.freeJobAddresses(j)
	l.notify(j, true)
	return nil
}

// reserveAddresses records the addresses of j's NICs on their networks.
func (l *Ledger) reserveAddresses(j *ferryv1.MigrationJob, now time.Time) {
	for _, nic := range j.GetTarget().GetNics() {
		n, ok := l.networks[nic.GetL3Network()]
		if !ok || nic.GetIp() == "" {
			continue
		}
		n = clone(n)
		n.Reservations = append(n.Reservations, &ferryv1.AddressReservation{Ip: nic.GetIp(), Mac: nic.GetMac(),
			VmName: j.GetTarget().GetVmName(), Job: j.GetName(), CreateTime: timestamppb.New(now)})
		l.networks[n.GetName()] = n
	}
}

// SetJobWaitingReason records why a queued job has not started.
func (l *Ledger) SetJobWaitingReason(name, reason string, now time.Time) error {
	return l.updateJob(name, now, func(j *ferryv1.MigrationJob) error {
		if j.GetState() != stateQueued {
			return fmt.Errorf("%w: job %s is %s, not QUEUED", ErrFailedPrecondition, name, j.GetState())
		}
		j.WaitingReason = reason
		return nil
	})
}

// updateJob applies change to a copy of the job and stores it on success.
func (l *Ledger) updateJob(name string, now time.Time, change func(*ferryv1.MigrationJob) error) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	j, ok := l.jobs[name]
	if !ok {
		return fmt.Errorf("job %s: %w", name, ErrNotFound)
	}
	prev := j.GetState()
	j = clone(j)
	if err := change(j); err != nil {
		return err
	}
	j.UpdateTime = timestamppb.New(now)
	l.stored(l.jobs[name], j)
	l.jobs[name] = j
	l.notify(j, false)
	l.jobStateChanged(prev, j, now)
	return nil
}

// finish stores j (a copy) in a terminal state. The caller holds the lock.
func (l *Ledger) finish(j *ferryv1.MigrationJob, state ferryv1.MigrationJobState, reason string, now time.Time) {
	prev := j.GetState()
	j.State = state
	if state == stateFailed || state == stateCancelled {
		l.freeJobAddresses(j)
	}
	j.Reason = reason
	j.WaitingReason = ""
	j.EndTime = timestamppb.New(now)
	j.UpdateTime = j.EndTime
	if j.GetStartTime() != nil {
		j.Duration = durationpb.New(now.Sub(j.GetStartTime().AsTime()))
	}
	l.stored(l.jobs[j.GetName()], j)
	l.jobs[j.GetName()] = j
	l.notify(j, false)
	l.jobStateChanged(prev, j, now)
}

// activeJob names the first unfinished job that matches, or "".
func (l *Ledger) activeJob(match func(*ferryv1.MigrationJob) bool) string {
	var names []string
	for _, j := range l.jobs {
		if !Terminal(j.GetState()) && match(j) {
			names = append(names, j.GetName())
		}
	}
	if len(names) == 0 {
		return ""
	}
	return slices.Min(names)
}
