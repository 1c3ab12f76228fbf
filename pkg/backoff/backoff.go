// Package backoff is Ferry's one way of waiting between attempts: Retry
// spaces attempts by a jittered, doubling wait within a time budget, for
// errors a predicate calls retryable (the KVM and VMware source drivers,
// with the agent's --source-retry-budget); Policy.Wait is the plain
// doubling wait (pkg/client's leader following); Sleep is the one
// context-aware sleep.
package backoff

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"syscall"
	"time"
)

// Policy says how long and how often to retry.
type Policy struct {
	// Budget is how long attempts go on after the first one fails; 0 or
	// less makes a single attempt.
	Budget time.Duration
	// Min and Max bound the wait between attempts, which doubles from Min
	// (each wait drawn in [w/2, w]).
	Min, Max time.Duration
}

// Retry calls try until it succeeds, fails with an error retryable calls
// final, ctx ends or the budget is spent; it returns how many attempts it
// made. try gets the attempt's number and the budget's deadline. Past the
// budget, the error says how many attempts were made and keeps the last
// one's error.
func Retry(ctx context.Context, p Policy, log *slog.Logger, retryable func(error) bool,
	try func(ctx context.Context, attempt int, deadline time.Time) error) (int, error) {
	deadline := time.Now().Add(max(p.Budget, 0))
	wait := max(p.Min, time.Millisecond)
	for attempt := 1; ; attempt++ {
		err := try(ctx, attempt, deadline)
		switch {
		case err == nil:
			return attempt, nil
		case ctx.Err() != nil:
			return attempt, ctx.Err()
		case !retryable(err):
			return attempt, err
		case time.Until(deadline) <= 0:
			if attempt == 1 {
				return attempt, err
			}
			return attempt, fmt.Errorf("gave up after %d attempts, the last one failing with: %w", attempt, err)
		}
		next := min(wait/2+rand.N(wait/2+1), time.Until(deadline))
		if log != nil {
			log.Info("source still unreachable", "attempt", attempt, "err", err, "next_in", next.Round(time.Millisecond))
		}
		if next > 0 && !Sleep(ctx, next) {
			return attempt, ctx.Err()
		}
		wait = min(2*wait, max(p.Max, p.Min))
	}
}

// Wait is the pause after the given attempt (1 for the first): Min,
// doubled for each attempt after the first, at most Max.
func (p Policy) Wait(attempt int) time.Duration {
	d := max(p.Min, 0)
	for i := 1; i < attempt && d < p.Max; i++ {
		d *= 2
	}
	return min(d, max(p.Max, p.Min))
}

// Sleep waits d or until ctx ends; it reports whether d passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Transport reports errors of a connection that could not be made or
// broke: refused, reset, unreachable, cut short or timed out, as opposed
// to a server that answered and refused (a login, a missing object).
func Transport(err error) bool {
	if err == nil {
		return false
	}
	var op *net.OpError
	var ne net.Error
	return errors.As(err, &op) || errors.As(err, &ne) && ne.Timeout() ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH) ||
		errors.Is(err, syscall.ETIMEDOUT)
}
