package kvm

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/ferry-v2v/ferry/agent/internal/runner"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// ErrSourceLost reports a source whose SSH connection dropped and could
// not be opened again within the retry budget.
var ErrSourceLost = errors.New("source connection lost")

// source is one job's connection to its source host, replaced when it
// drops.
type source struct {
	d    *Driver
	job  *runner.Job
	conn *Conn
}

// copyDisk copies one disk, and when the copy fails because the SSH
// connection dropped, reconnects, reattaches the backup and copies on
// from the cache's checkpoint, until the retry budget is spent.
func (s *source) copyDisk(ctx context.Context, b *Backup, disk *ferryv1.TargetDisk) error {
	for {
		err := s.d.copyOnce(ctx, s.job, b, disk)
		if err == nil || ctx.Err() != nil || !s.conn.Lost() {
			return err
		}
		budget := s.d.opts.RetryBudget
		s.job.Log.Warn("the SSH connection to the source dropped during the copy; reconnecting",
			"disk", disk.GetSourceDisk(), "err", err, "retry_budget", budget)
		if budget < 0 {
			return fmt.Errorf("%w (no retries): %w", ErrSourceLost, err)
		}
		if rerr := s.reconnect(ctx, b, budget); rerr != nil {
			return fmt.Errorf("%w and not back within the retry budget of %s: %w (the copy failed with: %v)",
				ErrSourceLost, budget, rerr, err)
		}
	}
}

// reconnect opens a new connection to the source with backoff until one
// works and the backup is reattached to it, or the budget is spent.
func (s *source) reconnect(ctx context.Context, b *Backup, budget time.Duration) error {
	a := s.job.Assignment
	deadline := time.Now().Add(budget)
	backoff := s.d.opts.RetryBackoffMin
	var last error
	for attempt := 1; ; attempt++ {
		remaining := time.Until(deadline)
		if remaining <= 0 {
			return fmt.Errorf("gave up after %d attempts, the last one failing with: %w", attempt-1, last)
		}
		actx, cancel := context.WithTimeout(ctx, min(remaining, leftoverConnectTimeout))
		conn, err := s.d.connect(actx, a.GetSource(), a.GetMigrationServer(), a.GetSecrets(), s.job.Log)
		cancel()
		if err == nil {
			if err = b.Reattach(conn); err != nil {
				conn.Close()
				return err // the backup is gone: retrying cannot help
			}
			s.conn.Close()
			s.conn = conn
			s.job.Log.Info("reconnected to the source", "attempts", attempt)
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, ErrHostKeyMismatch) || errors.Is(err, ErrConfig) {
			return err
		}
		last = err
		wait := min(backoff/2+rand.N(backoff/2+1), time.Until(deadline))
		s.job.Log.Info("source still unreachable", "attempt", attempt, "err", err, "next_in", wait.Round(time.Millisecond))
		if wait > 0 && !sleepCtx(ctx, wait) {
			return ctx.Err()
		}
		backoff = min(2*backoff, s.d.opts.RetryBackoffMax)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
