package kvm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"syscall"
	"time"

	"github.com/ferry-v2v/ferry/agent/internal/runner"
	"github.com/ferry-v2v/ferry/pkg/netsel"
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
	conn, attempts, err := s.dial(ctx, budget, func(err error) bool {
		return !errors.Is(err, ErrHostKeyMismatch) && !errors.Is(err, ErrConfig)
	})
	if err != nil {
		return err
	}
	if err := b.Reattach(conn); err != nil {
		conn.Close()
		return err // the backup is gone: retrying cannot help
	}
	s.conn.Close()
	s.conn = conn
	s.job.Log.Info("reconnected to the source", "attempts", attempts)
	return nil
}

// connectFirst opens the job's first connection to the source, retrying
// for the budget while the source is unreachable (no route, refused,
// reset, no address in the migration CIDR); a login or host key that is
// refused fails at once.
func (s *source) connectFirst(ctx context.Context) error {
	conn, attempts, err := s.dial(ctx, max(s.d.opts.RetryBudget, 0), unreachable)
	if err != nil {
		return err
	}
	if attempts > 1 {
		s.job.Log.Info("connected to the source after retrying", "attempts", attempts)
	}
	s.conn = conn
	return nil
}

// unreachable reports errors of a source that could not be reached at
// all, as opposed to one that answered and refused.
func unreachable(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) || errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) ||
		errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, netsel.ErrNoAddress)
}

// minAttempt is the least time an attempt to reconnect is given.
const minAttempt = 5 * time.Second

// dial connects to the job's source with backoff while retryable says an
// error may go away, until the budget is spent; it returns the connection
// and how many attempts it took. The error of the last attempt is kept.
func (s *source) dial(ctx context.Context, budget time.Duration, retryable func(error) bool) (*Conn, int, error) {
	a := s.job.Assignment
	deadline := time.Now().Add(budget)
	backoff := s.d.opts.RetryBackoffMin
	for attempt := 1; ; attempt++ {
		// Attempts stay near the budget, each given at least minAttempt.
		timeout := leftoverConnectTimeout
		if budget > 0 {
			timeout = max(min(time.Until(deadline), leftoverConnectTimeout), minAttempt)
		}
		actx, cancel := context.WithTimeout(ctx, timeout)
		conn, err := s.d.connect(actx, a.GetSource(), a.GetMigrationServer(), a.GetSecrets(), s.job.Log)
		cancel()
		switch {
		case err == nil:
			return conn, attempt, nil
		case ctx.Err() != nil:
			return nil, attempt, ctx.Err()
		case !retryable(err):
			return nil, attempt, err
		case time.Until(deadline) <= 0:
			if attempt == 1 {
				return nil, attempt, err
			}
			return nil, attempt, fmt.Errorf("gave up after %d attempts, the last one failing with: %w", attempt, err)
		}
		wait := min(backoff/2+rand.N(backoff/2+1), time.Until(deadline))
		s.job.Log.Info("source still unreachable", "attempt", attempt, "err", err, "next_in", wait.Round(time.Millisecond))
		if wait > 0 && !sleepCtx(ctx, wait) {
			return nil, attempt, ctx.Err()
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
