package session

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
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
	outbox *Outbox
	log    *slog.Logger
	retry  time.Duration

	mu        sync.Mutex
	connected bool
	waiting   map[string]chan *agentv1.FenceAnswer
}

// NewFences returns the fences; the session Client must get them in its
// Deps, to deliver answers and say when it is connected.
func NewFences(outbox *Outbox, log *slog.Logger) *Fences {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Fences{outbox: outbox, log: log.With("component", "fence"), retry: DefaultFenceRetry,
		waiting: map[string]chan *agentv1.FenceAnswer{}}
}

// Confirm returns nil once the leader confirmed that job runs under epoch
// on this host, an error wrapping ErrFenced when it said otherwise, or
// ctx's error.
func (f *Fences) Confirm(ctx context.Context, job string, epoch int64, write string) error {
	return f.confirm(ctx, job, epoch, write, false)
}

// ConfirmUndo returns nil once the leader allowed undoing what job wrote
// under epoch (its rollback after it failed or was cancelled here): the
// job has not been assigned again since. It returns an error wrapping
// ErrFenced when it has (the target is the new assignment's now), or
// ctx's error.
func (f *Fences) ConfirmUndo(ctx context.Context, job string, epoch int64) error {
	return f.confirm(ctx, job, epoch, "roll back the target", true)
}

func (f *Fences) confirm(ctx context.Context, job string, epoch int64, write string, undo bool) error {
	start := time.Now()
	for attempt := 1; ; attempt++ {
		id := newRequestID()
		ch := make(chan *agentv1.FenceAnswer, 1)
		f.mu.Lock()
		f.waiting[id] = ch
		connected := f.connected
		f.mu.Unlock()
		if connected {
			f.outbox.queue(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_FenceCheck{FenceCheck: &agentv1.FenceCheck{
				RequestId: id, Job: job, Epoch: epoch, Write: write, Undo: undo}}})
		}
		t := time.NewTimer(f.retry)
		var ans *agentv1.FenceAnswer
		select {
		case ans = <-ch:
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
		f.mu.Lock()
		delete(f.waiting, id)
		f.mu.Unlock()
		switch {
		case ans != nil && ans.GetCurrent():
			f.log.Debug("assignment confirmed before a target write", "job", job, "epoch", epoch, "write", write,
				"waited", time.Since(start).Round(time.Millisecond))
			return nil
		case ans != nil:
			f.log.Warn("target write refused by the leader", "job", job, "epoch", epoch, "write", write, "reason", ans.GetReason())
			return fmt.Errorf("%w: %s (%s)", ErrFenced, ans.GetReason(), write)
		case ctx.Err() != nil:
			return ctx.Err()
		}
		f.log.Info("waiting for the leader to confirm the assignment before a target write", "job", job, "epoch", epoch,
			"write", write, "attempt", attempt, "connected", connected)
	}
}

// answer delivers a FenceAnswer to its waiter, if it still waits.
func (f *Fences) answer(a *agentv1.FenceAnswer) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if ch, ok := f.waiting[a.GetRequestId()]; ok {
		ch <- a
		delete(f.waiting, a.GetRequestId())
	}
}

func (f *Fences) setConnected(v bool) {
	if f == nil {
		return
	}
	f.mu.Lock()
	f.connected = v
	f.mu.Unlock()
}

func newRequestID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
