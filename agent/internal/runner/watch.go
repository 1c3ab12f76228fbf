package runner

import (
	"context"
	"log/slog"
	"sync"

	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
)

// Watch runs fn beside the job's steps until the job ends, whatever phase
// it is in by then: when fn returns an error while the job runs, the job
// fails with that error as its reason, the step running is stopped and the
// target rolled back. fn's context ends with the job; fn must return then.
// Drivers watch through it what must hold for the whole job, such as a
// source VM that must stay off. Watch returns ErrNotRunning once the job
// has ended.
func (j *Job) Watch(name string, fn func(ctx context.Context) error) error {
	if j.watches == nil {
		return ErrNotRunning
	}
	return j.watches.start(name, fn)
}

// watchSet owns the watches of one job.
type watchSet struct {
	ctx  context.Context    // ends when the job ends
	stop context.CancelFunc // ends ctx
	fail context.CancelCauseFunc
	log  *slog.Logger

	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

// newWatchSet returns the watches of a job running under jobCtx, which
// fail cancels.
func newWatchSet(jobCtx context.Context, fail context.CancelCauseFunc, log *slog.Logger) *watchSet {
	ctx, stop := context.WithCancel(jobCtx)
	return &watchSet{ctx: ctx, stop: stop, fail: fail, log: log}
}

func (w *watchSet) start(name string, fn func(context.Context) error) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed || w.ctx.Err() != nil {
		return ErrNotRunning
	}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		err := fn(w.ctx)
		switch {
		case err != nil && w.ctx.Err() == nil:
			w.log.Warn("watch failed the job", "watch", name, "err", err)
			w.fail(&stopCause{outcome: agentv1.JobOutcome_JOB_OUTCOME_FAILED, reason: err.Error()})
		case err != nil:
			w.log.Debug("watch ended with the job", "watch", name, "err", err)
		}
	}()
	w.log.Debug("watch started", "watch", name)
	return nil
}

// close ends the watches and waits for them.
func (w *watchSet) close() {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	w.stop()
	w.wg.Wait()
}
