// Package ratelimit shares a bandwidth limit among byte streams: a token
// bucket that every running job of a migration server draws from before it
// moves data, whose rate the coordinator can change while jobs run.
//
// Waiters are served in the order they ask: each part of a request takes a
// ticket on a running count of issued bytes and waits until the bucket has
// earned that many, so a change of rate wakes everyone to recompute.
package ratelimit

import (
	"context"
	"math"
	"sync"
	"time"
)

// MinBurst is the smallest bucket: one chunk of the copy pipeline.
const MinBurst = 256 << 10

// Limiter is a token bucket measured in bytes. The zero value is not
// usable; call New. Its methods are safe for concurrent use.
type Limiter struct {
	now func() time.Time

	mu      sync.Mutex
	rate    float64 // bytes per second; 0 means unlimited
	burst   float64 // bytes the bucket holds when idle
	issued  float64 // bytes handed out since New
	earned  float64 // bytes the bucket has produced since New, at most issued+burst
	last    time.Time
	changed chan struct{} // closed and replaced when the rate changes
}

// New returns a limiter of bitsPerSecond; 0 or less means unlimited. The
// bucket starts full.
func New(bitsPerSecond int64) *Limiter {
	l := &Limiter{now: time.Now, changed: make(chan struct{})}
	l.last = l.now()
	l.setRate(bitsPerSecond)
	return l
}

// SetRate changes the rate for every stream, waiting ones included;
// bitsPerSecond 0 or less lifts the limit.
func (l *Limiter) SetRate(bitsPerSecond int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.advance(l.now())
	l.setRate(bitsPerSecond)
	close(l.changed)
	l.changed = make(chan struct{})
}

// Rate returns the limit in bits per second, 0 when unlimited.
func (l *Limiter) Rate() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return int64(math.Round(l.rate * 8))
}

// Granted is how many bytes the limiter has let through since New: the
// limiter's own account, which a rate measured from it cannot exceed by
// more than a burst plus the rate times the time.
func (l *Limiter) Granted() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.advance(l.now())
	return int64(math.Min(l.issued, l.earned))
}

// Burst returns the bucket size in bytes: 1/20 s of the rate, at least
// MinBurst; 0 when unlimited.
func (l *Limiter) Burst() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return int(l.burst)
}

// setRate sets rate and burst. A bucket that was unlimited starts full; a
// smaller bucket forgets what it can no longer hold.
func (l *Limiter) setRate(bitsPerSecond int64) {
	wasUnlimited := l.rate == 0
	if bitsPerSecond <= 0 {
		l.rate, l.burst = 0, 0
		return
	}
	l.rate = float64(bitsPerSecond) / 8
	l.burst = math.Max(l.rate/20, MinBurst)
	if wasUnlimited {
		l.earned = l.issued + l.burst
	}
	l.earned = math.Min(l.earned, l.issued+l.burst)
}

// advance brings earned up to now at the current rate. Unlimited, the
// bucket is always full.
func (l *Limiter) advance(now time.Time) {
	if l.rate == 0 {
		l.earned = l.issued + l.burst
		l.last = now
		return
	}
	if dt := now.Sub(l.last).Seconds(); dt > 0 {
		l.earned = math.Min(l.earned+dt*l.rate, l.issued+l.burst)
	}
	l.last = now
}

// WaitN blocks until n bytes may be sent, or ctx ends. A request larger
// than the bucket waits in parts, each no larger than the bucket, so other
// streams interleave with it. Bytes of a part already granted are not
// given back when ctx ends.
func (l *Limiter) WaitN(ctx context.Context, n int) error {
	for n > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		part, err := l.waitPart(ctx, n)
		if err != nil {
			return err
		}
		n -= part
	}
	return nil
}

// waitPart takes a ticket for up to n bytes, no more than the bucket, and
// waits until the bucket has earned it. It returns the bytes granted.
func (l *Limiter) waitPart(ctx context.Context, n int) (int, error) {
	l.mu.Lock()
	if l.rate == 0 {
		l.issued += float64(n) // counted for Granted
		l.earned = l.issued
		l.mu.Unlock()
		return n, nil
	}
	part := n
	if float64(part) > l.burst {
		part = int(l.burst)
	}
	l.advance(l.now()) // before issuing, so an idle bucket holds no more than its burst
	l.issued += float64(part)
	ticket := l.issued
	for {
		if l.rate == 0 || l.earned >= ticket {
			l.mu.Unlock()
			return part, nil
		}
		wait := time.Duration((ticket - l.earned) / l.rate * float64(time.Second))
		changed := l.changed
		l.mu.Unlock()
		if err := sleep(ctx, wait, changed); err != nil {
			return 0, err
		}
		l.mu.Lock()
		l.advance(l.now())
	}
}

// sleep waits for d, a change of rate or the end of ctx.
func sleep(ctx context.Context, d time.Duration, changed <-chan struct{}) error {
	if d < time.Microsecond {
		d = time.Microsecond
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-changed:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
