package kvm

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ferry-v2v/ferry/agent/internal/pipeline"
	"github.com/ferry-v2v/ferry/agent/internal/runner"
	"github.com/ferry-v2v/ferry/pkg/backoff"
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
	// stats add up what copyDisk copied (data read, and skipped because
	// the cache held it).
	stats pipeline.Stats
}

// copyDisk copies one disk, and when the copy fails because the SSH
// connection dropped, reconnects, reattaches the backup and copies on
// from the cache's checkpoint, until the retry budget is spent.
func (s *source) copyDisk(ctx context.Context, b exporter, disk *ferryv1.TargetDisk) error {
	for {
		st, err := s.d.copyOnce(ctx, s.job, b, disk)
		s.stats.DataBytes += st.DataBytes
		s.stats.SkippedBytes += st.SkippedBytes
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
func (s *source) reconnect(ctx context.Context, b exporter, budget time.Duration) error {
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
	return backoff.Transport(err) || errors.Is(err, netsel.ErrNoAddress)
}

// minAttempt is the least time an attempt to reconnect is given.
const minAttempt = 5 * time.Second

// dial connects to the job's source with backoff while retryable says an
// error may go away, until the budget is spent; it returns the connection
// and how many attempts it took. The error of the last attempt is kept.
func (s *source) dial(ctx context.Context, budget time.Duration, retryable func(error) bool) (*Conn, int, error) {
	a := s.job.Assignment
	var conn *Conn
	p := backoff.Policy{Budget: budget, Min: s.d.opts.RetryBackoffMin, Max: s.d.opts.RetryBackoffMax}
	attempts, err := backoff.Retry(ctx, p, s.job.Log, retryable, func(ctx context.Context, _ int, deadline time.Time) error {
		// Attempts stay near the budget, each given at least minAttempt.
		timeout := leftoverConnectTimeout
		if budget > 0 {
			timeout = max(min(time.Until(deadline), leftoverConnectTimeout), minAttempt)
		}
		actx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		c, err := s.d.connect(actx, a.GetSource(), a.GetMigrationServer(), a.GetSecrets(), s.job.Log)
		conn = c
		return err
	})
	if err != nil {
		return nil, attempts, err
	}
	return conn, attempts, nil
}
