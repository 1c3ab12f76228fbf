package session

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
)

// DefaultFenceRetry is how long a fence check waits for its answer before
// it is asked again (on the current session, or the next one).
const DefaultFenceRetry = 2 * time.Second

// ErrFenced: the leader said the assignment is no longer the job's
// current one, so the agent must not write the target.
var ErrFenced = errors.New("target write refused: the assignment is stale")

// Fences confirms with the leader, before every target write, that an
// assignment is still current (runner.Fencer). While the agent has no
// session it waits: a write happens only after the leader said yes, and
// a job cut off for too long is stopped by the session's watchdog.
type Fences struct {
	*asker[*agentv1.FenceAnswer]
	log *slog.Logger
}

// NewFences returns the fences; the session Client must get them in its
// Deps, to deliver answers and say when it is connected.
func NewFences(outbox *Outbox, log *slog.Logger) *Fences {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Fences{asker: newAsker[*agentv1.FenceAnswer](outbox, DefaultFenceRetry, false), log: log.With("component", "fence")}
}

// Confirm returns nil once the leader confirmed that job runs under epoch
// on this host, an error wrapping ErrFenced when it said otherwise, or
// ctx's error.
func (f *Fences) Confirm(ctx context.Context, job string, epoch int64, write string) error {
	return f.confirm(ctx, job, epoch, write, false, "")
}

// ConfirmUndo returns nil once the leader allowed undoing what job wrote
// under epoch on targetHost ("" is this host), its rollback after it
// failed or was cancelled here: the job was not assigned again since with
// its target there. It returns an error wrapping ErrFenced when it was
// (the target is the new assignment's now), or ctx's error.
func (f *Fences) ConfirmUndo(ctx context.Context, job string, epoch int64, targetHost string) error {
	return f.confirm(ctx, job, epoch, "roll back the target", true, targetHost)
}

func (f *Fences) confirm(ctx context.Context, job string, epoch int64, write string, undo bool, targetHost string) error {
	start := time.Now()
	for attempt := 1; ; attempt++ {
		ans, got, sent, err := f.once(ctx, func(id string) *agentv1.ConnectRequest {
			return &agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_FenceCheck{FenceCheck: &agentv1.FenceCheck{
				RequestId: id, Job: job, Epoch: epoch, Write: write, Undo: undo, TargetHost: targetHost}}}
		})
		switch {
		case got && ans.GetCurrent():
			f.log.Debug("assignment confirmed before a target write", "job", job, "epoch", epoch, "write", write,
				"waited", time.Since(start).Round(time.Millisecond))
			return nil
		case got:
			f.log.Warn("target write refused by the leader", "job", job, "epoch", epoch, "write", write, "reason", ans.GetReason())
			return fmt.Errorf("%w: %s (%s)", ErrFenced, ans.GetReason(), write)
		case err != nil:
			return err
		}
		f.log.Info("waiting for the leader to confirm the assignment before a target write", "job", job, "epoch", epoch,
			"write", write, "attempt", attempt, "connected", sent)
	}
}

func (f *Fences) setConnected(v bool) {
	if f != nil {
		f.asker.setConnected(v)
	}
}
