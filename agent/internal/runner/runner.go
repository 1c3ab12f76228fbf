// Package runner runs an agent's assignments: each job walks the
// itinerary (CONVERTING → UPLOADING → CONFIGURING) as an ordered list of
// steps, calling the source and target drivers of this build. Progress is
// reported at most once a second per job; every result carries the
// assignment's fencing epoch.
package runner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"runtime/debug"
	"sync"
	"time"

	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/ratelimit"
)

// Defaults of Config.
const (
	DefaultProgressInterval = time.Second
	DefaultResultMemory     = 10 * time.Minute
)

// ErrNotRunning: the runner has stopped (Run's context ended).
var ErrNotRunning = errors.New("runner stopped")

// Reporter receives progress and results. It must not block: the agent's
// session queues them until they can be sent.
type Reporter interface {
	Progress(p *agentv1.JobProgress)
	Result(r *agentv1.JobResult)
}

// Config tunes the runner.
type Config struct {
	// DataDir holds job caches when a migration server has no cache path.
	DataDir string
	// ProgressInterval is the least time between two progress reports of
	// one job (default 1 s).
	ProgressInterval time.Duration
	// ResultMemory is how long a finished job's result is remembered, so
	// that an assignment sent again is answered with it instead of
	// running the job twice (default 10 min).
	ResultMemory time.Duration
}

// Deps are the runner's collaborators; Logger and Now may be nil.
type Deps struct {
	Drivers  Drivers
	Reporter Reporter
	// Fencer confirms assignments before target writes (nil: none).
	Fencer Fencer
	Logger *slog.Logger
	Now    func() time.Time
	// ReleaseMemory is called when the last running job has ended, to
	// hand the memory jobs used back to the system; nil means
	// ReleaseMemory.
	ReleaseMemory func()
}

// ReleaseMemory collects twice, which empties the pools of copy buffers
// (a sync.Pool keeps its items for one collection more), and returns the
// freed memory to the system at once, instead of keeping the heap a job
// needed: an idle agent's RSS comes back down to what it is fresh.
func ReleaseMemory() {
	runtime.GC()
	debug.FreeOSMemory()
}

// Runner runs jobs. Run owns every job goroutine.
type Runner struct {
	cfg      Config
	drivers  Drivers
	reporter Reporter
	fencer   Fencer
	log      *slog.Logger
	now      func() time.Time
	release  func()

	base context.Context // parent of every job; cancelled when Run's ctx ends
	stop context.CancelFunc

	mu       sync.Mutex
	closed   bool
	wg       sync.WaitGroup
	jobs     map[string]*execution
	finished map[string]finished
	limits   map[string]*limits // by migration server
}

// limits are a migration server's bandwidth limits, shared by its jobs.
type limits struct{ down, up *ratelimit.Limiter }

// limitsFor returns the server's limiters at the rates a has. The caller
// holds r.mu.
func (r *Runner) limitsFor(a *agentv1.Assignment) *limits {
	ms := a.GetMigrationServer()
	l, ok := r.limits[ms.GetName()]
	if !ok {
		l = &limits{down: ratelimit.New(ms.GetDownstreamBitsPerSecond()), up: ratelimit.New(ms.GetUpstreamBitsPerSecond())}
		r.limits[ms.GetName()] = l
		return l
	}
	l.down.SetRate(ms.GetDownstreamBitsPerSecond())
	l.up.SetRate(ms.GetUpstreamBitsPerSecond())
	return l
}

// SetLimits sets a migration server's bandwidth limits at once: its
// running jobs share the server's two buckets, so they feel the change
// from the next byte they ask for, and jobs started later start with it.
// It logs the bytes each bucket had let through until the change, which
// is the limiter's own account of the rate before and after it.
func (r *Runner) SetLimits(b *agentv1.BandwidthLimits) {
	name := b.GetMigrationServer()
	r.mu.Lock()
	l, ok := r.limits[name]
	if !ok {
		l = &limits{down: ratelimit.New(0), up: ratelimit.New(0)}
		r.limits[name] = l
	}
	r.mu.Unlock()
	down, up := l.down.Granted(), l.up.Granted()
	l.down.SetRate(b.GetDownstreamBitsPerSecond())
	l.up.SetRate(b.GetUpstreamBitsPerSecond())
	r.log.Info("bandwidth limits set", "migration_server", name,
		"downstream_bits_per_second", b.GetDownstreamBitsPerSecond(), "downstream_granted_bytes", down,
		"upstream_bits_per_second", b.GetUpstreamBitsPerSecond(), "upstream_granted_bytes", up)
}

type execution struct {
	job    *Job
	cancel context.CancelCauseFunc
	done   chan struct{}
}

type finished struct {
	result *agentv1.JobResult
	at     time.Time
}

// New returns a runner. It accepts jobs at once; Run owns them.
func New(cfg Config, deps Deps) *Runner {
	if cfg.ProgressInterval <= 0 {
		cfg.ProgressInterval = DefaultProgressInterval
	}
	if cfg.ResultMemory <= 0 {
		cfg.ResultMemory = DefaultResultMemory
	}
	log := deps.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	now := deps.Now
	if now == nil {
		now = time.Now
	}
	release := deps.ReleaseMemory
	if release == nil {
		release = ReleaseMemory
	}
	base, stop := context.WithCancel(context.Background())
	return &Runner{cfg: cfg, drivers: deps.Drivers, reporter: deps.Reporter, fencer: deps.Fencer, log: log.With("component", "runner"),
		now: now, release: release, base: base, stop: stop, jobs: map[string]*execution{}, finished: map[string]finished{},
		limits: map[string]*limits{}}
}

// Run waits until ctx ends, then stops every job and waits for them. Jobs
// stopped this way are interrupted, not finished: they report no result.
func (r *Runner) Run(ctx context.Context) error {
	<-ctx.Done()
	r.mu.Lock()
	r.closed = true
	r.stop()
	r.mu.Unlock()
	r.wg.Wait()
	return nil
}

// Start runs an assignment. The same job and epoch again is a duplicate:
// ignored while it runs, answered with its result once it finished. A
// newer epoch of a running job supersedes it.
func (r *Runner) Start(a *agentv1.Assignment) error {
	name, epoch := a.GetJob().GetName(), a.GetEpoch()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return ErrNotRunning
	}
	r.forget()
	if f, ok := r.finished[name]; ok && f.result.GetEpoch() == epoch {
		r.log.Info("assignment of a finished job; reporting its result again", "job", name, "epoch", epoch)
		r.reporter.Result(f.result)
		return nil
	}
	prev := r.jobs[name]
	if prev != nil {
		if prev.job.Epoch() == epoch {
			return nil
		}
		if prev.job.Epoch() > epoch {
			return fmt.Errorf("job %s: assignment epoch %d is older than the running %d", name, epoch, prev.job.Epoch())
		}
		prev.cancel(&stopCause{outcome: agentv1.JobOutcome_JOB_OUTCOME_CANCELLED, reason: "superseded by a newer assignment"})
	}
	ctx, cancel := context.WithCancelCause(r.base)
	log := r.log.With("job", name, "epoch", epoch)
	lim := r.limitsFor(a)
	e := &execution{cancel: cancel, done: make(chan struct{}), job: &Job{Assignment: a, CacheDir: cacheDir(r.cfg.DataDir, a), Log: log,
		Downstream: lim.down, Upstream: lim.up, watches: newWatchSet(ctx, cancel, log), fencer: r.fencer}}
	e.job.Progress = newProgress(a, r.now, r.cfg.ProgressInterval, r.reporter.Progress)
	e.job.warm = newWarmState(e.job)
	r.jobs[name] = e
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.run(ctx, e, prev)
	}()
	log.Info("job assigned", "source_vm", a.GetJob().GetSourceVm())
	return nil
}

// run walks one job and reports its result; it waits first for the
// execution it supersedes, which shares its cache directory. The last job
// to end releases the memory jobs used.
func (r *Runner) run(ctx context.Context, e *execution, prev *execution) {
	defer close(e.done)
	idle := false // no job runs once this one is gone
	defer func() {
		if idle {
			r.release()
		}
	}()
	if prev != nil {
		<-prev.done
	}
	var wg sync.WaitGroup
	flushCtx, stopFlush := context.WithCancel(ctx)
	wg.Add(1)
	go func() {
		defer wg.Done()
		r.flushEvery(flushCtx, e.job.Progress)
	}()
	res := walk(ctx, r.drivers, e.job)
	e.job.watches.close()
	stopFlush()
	wg.Wait()
	var stop *stopCause
	interrupted := ctx.Err() != nil && !errors.As(context.Cause(ctx), &stop)
	if res.GetOutcome() != agentv1.JobOutcome_JOB_OUTCOME_SUCCEEDED && !interrupted {
		r.rollback(e.job)
	}
	if !interrupted {
		r.endWarm(e.job, res.GetOutcome() == agentv1.JobOutcome_JOB_OUTCOME_SUCCEEDED)
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	if r.jobs[e.job.Name()] == e {
		delete(r.jobs, e.job.Name())
	}
	idle = len(r.jobs) == 0
	if interrupted {
		// The agent is shutting down: the job is interrupted, not finished;
		// the coordinator assigns it again when the agent comes back.
		e.job.Log.Info("job interrupted by shutdown")
		return
	}
	r.finished[e.job.Name()] = finished{result: res, at: r.now()}
	e.job.Log.Info("job finished", "outcome", res.GetOutcome(), "reason", res.GetReason())
	r.reporter.Result(res)
}

// rollbackTimeout bounds undoing a failed or cancelled job on the target.
const rollbackTimeout = 2 * time.Minute

// rollback undoes what a failed or cancelled job made on the target, with
// its own deadline (the job's context has usually ended already), once
// the leader confirmed that the job was not assigned again since.
func (r *Runner) rollback(j *Job) {
	ctx, cancel := context.WithTimeout(context.Background(), rollbackTimeout)
	defer cancel()
	if j.IsExport() {
		if r.drivers.Exporter == nil {
			return
		}
		if err := r.drivers.Exporter.Discard(ctx, j); err != nil {
			j.Log.Error("discard the partial bundle", "err", err)
			return
		}
		j.Log.Info("partial bundle discarded")
		return
	}
	rb, ok := r.drivers.Target.(Rollbacker)
	if !ok {
		return
	}
	// A job assigned again since (this agent was cut off, say) with its
	// target on the same host has a new owner of the same volumes and
	// domain: undoing them would destroy its work. Without the leader's
	// word nothing is undone either.
	if j.fencer != nil {
		if err := j.fencer.ConfirmUndo(ctx, j.Name(), j.Epoch(), j.Assignment.GetJob().GetTargetHost()); err != nil {
			j.Log.Error("target not rolled back", "err", err)
			return
		}
	}
	if err := rb.Rollback(ctx, j); err != nil {
		j.Log.Error("roll back the target", "err", err)
		return
	}
	j.Log.Info("target rolled back")
}

// flushEvery sends progress the throttle held back.
func (r *Runner) flushEvery(ctx context.Context, p *Progress) {
	tick := time.NewTicker(r.cfg.ProgressInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			p.flush()
		}
	}
}

// forget drops remembered results past ResultMemory. The caller holds r.mu.
func (r *Runner) forget() {
	now := r.now()
	for name, f := range r.finished {
		if now.Sub(f.at) > r.cfg.ResultMemory {
			delete(r.finished, name)
		}
	}
}

// Cancel stops a job running under epoch; its result says CANCELLED with
// reason. It reports whether such a job was running.
func (r *Runner) Cancel(job string, epoch int64, reason string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.jobs[job]
	if !ok || e.job.Epoch() != epoch {
		return false
	}
	e.job.Log.Info("cancelling job", "reason", reason)
	e.cancel(&stopCause{outcome: agentv1.JobOutcome_JOB_OUTCOME_CANCELLED, reason: reason})
	return true
}

// Cutover sets when a warm job running under epoch cuts over (zero: at
// once). It reports whether such a job was running.
func (r *Runner) Cutover(job string, epoch int64, at time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.jobs[job]
	if !ok || e.job.Epoch() != epoch || !e.job.IsWarm() {
		return false
	}
	e.job.Log.Info("cutover requested", "at", at)
	e.job.warm.SetCutover(at)
	return true
}

// StopAll fails every running job with reason, e.g. when the agent has
// been cut off from the coordinators longer than the grace period.
func (r *Runner) StopAll(reason string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.jobs {
		e.cancel(&stopCause{outcome: agentv1.JobOutcome_JOB_OUTCOME_FAILED, reason: reason})
	}
	return len(r.jobs)
}

// Held lists the running jobs, for the agent's hello.
func (r *Runner) Held() []*agentv1.HeldJob {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*agentv1.HeldJob, 0, len(r.jobs))
	for _, e := range r.jobs {
		out = append(out, &agentv1.HeldJob{Job: e.job.Name(), Epoch: e.job.Epoch(), Phase: e.job.Progress.Phase()})
	}
	return out
}

// Inventory reads a source's inventory through the source driver of its
// platform.
func (r *Runner) Inventory(ctx context.Context, req *agentv1.InventoryRequest) (*ferryv1.SourceInventory, error) {
	platform := req.GetSource().GetType()
	l, ok := r.drivers.Sources[platform].(Lister)
	if !ok {
		return nil, &NoDriverError{What: platformName(platform) + " source"}
	}
	return l.Inventory(ctx, req)
}
