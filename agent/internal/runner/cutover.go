package runner

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/ferry-v2v/ferry/agent/internal/pipeline"
)

// The cutover of a warm job: before the source stops, the target's
// volumes are opened for the last delta (DeltaSinker, when the source
// forwards it: CutoverForwarder) and the target VM is defined
// (CutoverConfigurer); then the source stops (Warmer.StopSource), the
// last round runs, verified, and CONFIGURING starts the target.

// DeltaSink takes the pieces of the cutover's round straight onto the
// target volumes as the source reads them, so the last delta crosses once
// (source → target, not through the cache and back) while the source is
// stopped. Write may be called from several goroutines.
type DeltaSink interface {
	// Write puts one piece of disk's delta onto its volume, data or
	// zeroes when e.Zero (data nil), and reads it back to compare: the
	// cutover's delta is verified as it goes, each read-back beside the
	// source's reads of the pieces after it.
	Write(ctx context.Context, disk string, e pipeline.Extent, data []byte) error
	// Finish makes what was written durable and returns its bytes.
	Finish(ctx context.Context) (int64, error)
	// Close releases the volumes; it may follow Finish or a failure, and
	// be called again.
	Close() error
}

// CutoverForwarder is what a Warmer may also do: send the cutover's
// round to the job's CutoverSink (RoundResult.Forwarded) instead of the
// cache, when the target offers one.
type CutoverForwarder interface {
	ForwardsCutover() bool
}

// DeltaSinker is what a target driver may also do for a warm job: open a
// DeltaSink on the job's volumes, before the source stops.
type DeltaSinker interface {
	OpenDeltaSink(ctx context.Context, job *Job) (DeltaSink, error)
}

// CutoverSink is the sink the cutover's round may write its pieces to
// instead of the cache (then RoundResult.Forwarded says so); nil outside
// that round or when the target offers none. The cache need not hold the
// cutover's delta: a job that fails after it starts over with a full
// round, and one whose agent died resumes from the last round recorded,
// whose next round copies again everything changed since.
func (j *Job) CutoverSink() DeltaSink {
	if j.warm == nil {
		return nil
	}
	j.warm.mu.Lock()
	defer j.warm.mu.Unlock()
	return j.warm.sink
}

// SourceStopped records that the source VM stopped now: the measured
// downtime starts here. StopSource calls it at the stop itself, after
// what it prepares while the VM still runs; otherwise the downtime starts
// when StopSource was called.
func (j *Job) SourceStopped() {
	if j.warm == nil {
		return
	}
	j.warm.mu.Lock()
	j.warm.stoppedAt = time.Now()
	j.warm.mu.Unlock()
}

// SourceStoppedAt records that the source VM stopped at t, before now:
// an agent killed in the cutover stopped it (SourceStoppedMark), and the
// measured downtime counts from then, not from the restart.
func (j *Job) SourceStoppedAt(t time.Time) {
	if j.warm == nil {
		return
	}
	j.warm.mu.Lock()
	if j.warm.stoppedAt.IsZero() || t.Before(j.warm.stoppedAt) {
		j.warm.stoppedAt = t
	}
	j.warm.mu.Unlock()
}

// Warn adds a warning for the operator to a warm job's result (such as
// how the cutover stopped the source); outside a warm job it only logs.
func (j *Job) Warn(msg string) {
	if j.warm == nil {
		j.Log.Warn(msg)
		return
	}
	j.warm.mu.Lock()
	j.warm.warnings = append(j.warm.warnings, msg)
	j.warm.mu.Unlock()
}

// CutoverConfigurer is what a target driver may also do for a warm job:
// define the target VM, stopped, before the cutover stops the source
// (DefineAhead; false when it cannot, and then CONFIGURING defines it as
// for any job), and start it once the last delta is on its volumes
// (StartDefined). Both return warnings for the operator.
type CutoverConfigurer interface {
	DefineAhead(ctx context.Context, job *Job) (bool, []string, error)
	StartDefined(ctx context.Context, job *Job) ([]string, error)
}

// cutover stops the source and moves the last delta, verified. The
// target's volumes are opened for the delta (DeltaSinker) before the
// source stops.
func cutover(ctx context.Context, d Drivers, j *Job) ([]string, error) {
	w, a, _ := warmerOf(d, j)
	var sink DeltaSink
	f, forwards := w.(CutoverForwarder)
	if s, ok := d.Target.(DeltaSinker); ok && forwards && f.ForwardsCutover() {
		var err error
		if sink, err = s.OpenDeltaSink(ctx, j); err != nil {
			return nil, fmt.Errorf("open the target volumes for the cutover: %w", err)
		}
		defer func() {
			j.warm.mu.Lock()
			j.warm.sink = nil
			j.warm.mu.Unlock()
			if err := sink.Close(); err != nil {
				j.Log.Warn("release the target volumes after the cutover's round", "err", err)
			}
		}()
		j.warm.mu.Lock()
		j.warm.sink = sink
		j.warm.mu.Unlock()
	}
	if c, ok := d.Target.(CutoverConfigurer); ok {
		// A target VM that cannot be defined fails the job before the
		// source stops.
		start := time.Now()
		defined, warnings, err := c.DefineAhead(ctx, j)
		if err != nil {
			return nil, err
		}
		j.warm.mu.Lock()
		j.warm.defined, j.warm.warnings = defined, append(j.warm.warnings, warnings...)
		j.warm.mu.Unlock()
		if defined {
			j.Log.Info("target VM defined ahead of the cutover", "seconds", time.Since(start).Seconds())
		}
	}
	j.SourceStopped()
	if err := w.StopSource(ctx, j); err != nil {
		return nil, fmt.Errorf("stop the source VM: %w", err)
	}
	if _, err := j.round(ctx, w, a, true, sink); err != nil {
		return nil, err
	}
	return nil, nil
}

// configureWarm starts the target the cutover defined (or defines and
// starts it) and measures the downtime since the source was stopped.
func configureWarm(ctx context.Context, d Drivers, j *Job) ([]string, error) {
	var warnings []string
	var err error
	if c, ok := d.Target.(CutoverConfigurer); ok && j.warm.defined {
		warnings, err = c.StartDefined(ctx, j)
	} else {
		warnings, err = configure(ctx, d, j)
	}
	j.warm.mu.Lock()
	warnings = append(slices.Clone(j.warm.warnings), warnings...)
	j.warm.mu.Unlock()
	if err == nil {
		j.warm.mu.Lock()
		j.warm.downtime = time.Since(j.warm.stoppedAt)
		j.warm.mu.Unlock()
		j.Log.Info("cutover done", "downtime_seconds", j.warm.downtime.Seconds())
	}
	return warnings, err
}
