// Package scheduler starts queued migration jobs on the leader. A job
// starts when the running count is under the job parallelism setting, its
// migration server is enabled and the server's host connected, and the
// server's cache has room for it: the free space the host's agent reports
// for the server's cache_path (where jobs write), minus what the running
// jobs of that server reserve (the sum of their source disk sizes), must
// hold the job's disks (see package capacity). A job that waits says why.
//
// Starting a job proposes StartMigrationJob under a new fencing epoch and
// then hands the assignment to the host's agent. If handing it over fails
// (the agent went away in between), the job stays RUNNING under its new
// epoch: the session manager assigns it again when the agent says hello
// without holding it, and fails it with "agent lost" if the agent stays
// away past the grace period. Putting it back in the queue would need a
// RUNNING → QUEUED transition the ledger deliberately does not have. A job
// whose assignment cannot be prepared at all (its source or a credential
// is gone, a secret does not unseal) is failed with the reason.
package scheduler

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"strings"
	"time"

	"github.com/ferry-v2v/ferry/coordinator/internal/fsm"
	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	"github.com/ferry-v2v/ferry/coordinator/internal/watch"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// Defaults of Config.
const (
	DefaultInterval       = 500 * time.Millisecond
	DefaultProposeTimeout = 5 * time.Second
)

// Config tunes the scheduler; zero values take the defaults.
type Config struct {
	// Interval is how often the scheduler looks at the queue besides
	// when jobs change.
	Interval time.Duration
	// ProposeTimeout bounds each ledger write.
	ProposeTimeout time.Duration
}

// Validate checks cfg.
func (c Config) Validate() error {
	if c.Interval < 0 || c.ProposeTimeout < 0 {
		return errors.New("scheduler: negative interval or timeout")
	}
	return nil
}

// Proposer is the Raft node as the scheduler uses it.
type Proposer interface {
	Propose(ctx context.Context, cmd *ledgerv1.Command) (fsm.Result, error)
}

// Agents are the agent sessions of this node (session.Manager).
type Agents interface {
	Connected(host string) bool
	Hosts() map[string]*ferryv1.HostFacts
	Assignment(job *ferryv1.MigrationJob, epoch int64) (*agentv1.Assignment, error)
	Assign(ctx context.Context, host string, a *agentv1.Assignment) error
}

// Clock tells the time.
type Clock interface{ Now() time.Time }

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// Deps are the scheduler's collaborators; Logger and Clock may be nil.
type Deps struct {
	Proposer Proposer
	Ledger   *ledger.Ledger
	Hub      *watch.Hub
	Agents   Agents
	Logger   *slog.Logger
	Clock    Clock
}

// Scheduler starts queued jobs while this node leads.
type Scheduler struct {
	cfg    Config
	raft   Proposer
	ledger *ledger.Ledger
	hub    *watch.Hub
	agents Agents
	log    *slog.Logger
	clock  Clock
}

// New returns a scheduler; Run drives it.
func New(cfg Config, deps Deps) *Scheduler {
	if cfg.Interval == 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.ProposeTimeout == 0 {
		cfg.ProposeTimeout = DefaultProposeTimeout
	}
	log := deps.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	clock := deps.Clock
	if clock == nil {
		clock = systemClock{}
	}
	return &Scheduler{cfg: cfg, raft: deps.Proposer, ledger: deps.Ledger, hub: deps.Hub, agents: deps.Agents,
		log: log.With("component", "scheduler"), clock: clock}
}

// minEventGap spaces passes that job events trigger, so a burst of
// creations costs a few passes, not one per job.
const minEventGap = 100 * time.Millisecond

// Lead schedules for one leadership term (see package leader): on a
// ticker, and whenever a job changes. It returns when ctx ends.
func (s *Scheduler) Lead(ctx context.Context) {
	events, unsubscribe := s.hub.Subscribe(256)
	defer func() { unsubscribe() }()
	tick := time.NewTicker(s.cfg.Interval)
	defer tick.Stop()
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				events, unsubscribe = s.hub.Subscribe(256)
			} else if ev.Type == ferryv1.WatchEventType_WATCH_EVENT_TYPE_PROGRESS {
				continue
			}
			drain(events)
			if time.Since(last) < minEventGap {
				continue // the ticker's pass comes soon enough
			}
		case <-tick.C:
		}
		s.pass(ctx)
		last = time.Now()
	}
}

// drain discards the events already queued: one pass covers them all.
func drain(events <-chan watch.Event) {
	for {
		select {
		case _, ok := <-events:
			if !ok {
				return
			}
		default:
			return
		}
	}
}

// pass looks at the queue once, oldest job first.
func (s *Scheduler) pass(ctx context.Context) {
	st := newState(s.ledger, s.agents)
	candidates, blocked := st.queued()
	var waits []*ledgerv1.Command
	wait := func(name, reason, was string) {
		if reason != was {
			waits = append(waits, &ledgerv1.Command{Op: &ledgerv1.Command_SetJobWaitingReason{
				SetJobWaitingReason: &ledgerv1.SetJobWaitingReason{Name: name, Reason: reason}}})
		}
	}
	for _, j := range candidates {
		reason := st.blocker(j)
		if reason == "" {
			if err := s.start(ctx, j, st); err != nil {
				s.log.Warn("start job", "job", j.GetName(), "err", err)
				return
			}
			continue
		}
		wait(j.GetName(), reason, j.GetWaitingReason())
	}
	for _, w := range blocked {
		wait(w.name, w.reason, w.was)
	}
	if len(waits) == 0 {
		return
	}
	batch := &ledgerv1.Command{Op: &ledgerv1.Command_Batch{Batch: &ledgerv1.Batch{Commands: waits}}}
	if err := s.propose(ctx, batch); err != nil {
		// A job may have been cancelled since the pass read it.
		s.log.Debug("record waiting reasons", "jobs", len(waits), "err", err)
	}
}

// start runs j on its migration server's host under a new epoch, then
// hands the assignment to the host's agent.
func (s *Scheduler) start(ctx context.Context, j *ferryv1.MigrationJob, st *state) error {
	host := st.host(j)
	epoch := j.GetEpoch() + 1
	cmd := &ledgerv1.Command{Op: &ledgerv1.Command_StartMigrationJob{StartMigrationJob: &ledgerv1.StartMigrationJob{
		Name: j.GetName(), Host: host, Epoch: epoch}}}
	if err := s.propose(ctx, cmd); err != nil {
		if errors.Is(err, ledger.ErrFailedPrecondition) || errors.Is(err, ledger.ErrStaleEpoch) || errors.Is(err, ledger.ErrNotFound) {
			s.log.Debug("job changed before it could start", "job", j.GetName(), "err", err)
			return nil
		}
		return err
	}
	st.started(j)
	s.log.Info("job started", "job", j.GetName(), "host", host, "epoch", epoch)
	running, ok := s.ledger.Job(j.GetName())
	if !ok {
		return nil
	}
	a, err := s.agents.Assignment(running, epoch)
	if err != nil {
		return s.fail(ctx, running, "cannot prepare the assignment: "+err.Error())
	}
	if err := s.agents.Assign(ctx, host, a); err != nil {
		s.log.Warn("assignment not delivered; it is sent again when the agent reconnects", "job", j.GetName(), "host", host, "err", err)
	}
	return nil
}

func (s *Scheduler) fail(ctx context.Context, j *ferryv1.MigrationJob, reason string) error {
	s.log.Warn("job failed", "job", j.GetName(), "reason", reason)
	cmd := &ledgerv1.Command{Op: &ledgerv1.Command_FinishMigrationJob{FinishMigrationJob: &ledgerv1.FinishMigrationJob{
		Name: j.GetName(), Epoch: j.GetEpoch(), State: ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED, Reason: reason}}}
	if err := s.propose(ctx, cmd); err != nil && !errors.Is(err, ledger.ErrStaleEpoch) {
		return err
	}
	return nil
}

func (s *Scheduler) propose(ctx context.Context, cmd *ledgerv1.Command) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.ProposeTimeout)
	defer cancel()
	cmd.Time = timestampOf(s.clock.Now())
	_, err := s.raft.Propose(ctx, cmd)
	return err
}

// hostName turns a host reference into the host resource name.
func hostName(h string) string {
	if h == "" || strings.HasPrefix(h, "hosts/") {
		return h
	}
	return "hosts/" + h
}

// bySubmission orders jobs oldest first.
func bySubmission(a, b *ferryv1.MigrationJob) int {
	if c := a.GetCreateTime().AsTime().Compare(b.GetCreateTime().AsTime()); c != 0 {
		return c
	}
	return cmp.Compare(a.GetName(), b.GetName())
}
