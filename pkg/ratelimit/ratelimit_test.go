package ratelimit

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// fakeClock is a clock the test moves by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newFake(bitsPerSecond int64) (*Limiter, *fakeClock) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	l := New(bitsPerSecond)
	l.now = clk.now
	l.last = clk.now()
	return l, clk
}

// granted reports whether WaitN(n) returns without waiting.
func granted(t *testing.T, l *Limiter, n int) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	err := l.WaitN(ctx, n)
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatal(err)
	}
	return err == nil
}

func TestBurst(t *testing.T) {
	for _, tc := range []struct {
		bps   int64
		burst int
	}{
		{0, 0},
		{8 << 20, MinBurst}, // 1 MiB/s: 1/20 s is less than one chunk
		{64 << 20, 419430},  // 8 MiB/s: 1/20 s
		{8e9, 50_000_000},   // 1 GB/s
	} {
		l := New(tc.bps)
		if got := l.Burst(); got != tc.burst {
			t.Errorf("New(%d).Burst() = %d, want %d", tc.bps, got, tc.burst)
		}
		if got := l.Rate(); got != tc.bps {
			t.Errorf("New(%d).Rate() = %d", tc.bps, got)
		}
	}
}

// TestFakeClock checks the bucket's arithmetic: it starts full, refills at
// the rate, never holds more than the burst, and a new rate applies from
// the moment it is set.
func TestFakeClock(t *testing.T) {
	l, clk := newFake(80_000_000) // 10 MB/s, burst 500 kB
	if !granted(t, l, 500_000) {
		t.Fatal("a full bucket refused its burst")
	}
	if granted(t, l, 100_000) {
		t.Fatal("an empty bucket granted 100 kB")
	}
	// The refused request keeps its ticket: 100 kB are owed first.
	clk.add(30 * time.Millisecond) // 300 kB earned
	if !granted(t, l, 200_000) {
		t.Fatal("300 kB earned did not cover 100 kB owed and 200 kB asked")
	}
	clk.add(time.Hour) // the bucket caps at the burst
	if !granted(t, l, 500_000) || granted(t, l, 1) {
		t.Fatal("an idle bucket held more or less than its burst")
	}
	l.SetRate(8_000_000) // 1 MB/s, burst MinBurst
	clk.add(100 * time.Millisecond)
	if !granted(t, l, 99_000) {
		t.Fatal("100 ms at 1 MB/s did not grant 99 kB")
	}
	if granted(t, l, 10_000) {
		t.Fatal("the bucket earned at the old rate after SetRate")
	}
}

// TestMeasuredRate runs real transfers and measures the rate they get:
// one stream, a stream asking more than the bucket at once, and four
// streams sharing the limit. TestFakeClock checks the arithmetic exactly;
// the pipeline's tests check the limit holds under load.
func TestMeasuredRate(t *testing.T) {
	const bps = 80_000_000 // 10 MB/s
	for _, tc := range []struct {
		name    string
		streams int
		request int
		total   int
	}{
		{"one stream", 1, 256 << 10, 4_000_000},
		{"requests above the burst", 1, 2 << 20, 4_000_000},
		{"four streams", 4, 256 << 10, 4_000_000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := New(bps)
			burst := l.Burst()
			start := time.Now()
			var wg sync.WaitGroup
			for range tc.streams {
				wg.Go(func() {
					for sent := 0; sent < tc.total/tc.streams; sent += tc.request {
						if err := l.WaitN(context.Background(), tc.request); err != nil {
							t.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			elapsed := time.Since(start)
			want := time.Duration(float64(tc.total-burst) / (bps / 8) * float64(time.Second))
			// Never faster than the rate. Slower only when the machine is so
			// busy that waiters wake later than a bucket's worth of time; the
			// bucket does not hoard what it could not hold.
			if elapsed < want-want/20 {
				t.Errorf("%d bytes took %v: faster than the limit allows (%v)", tc.total, elapsed, want)
			}
			if elapsed > want+want/10 {
				t.Logf("%d bytes took %v, want %v: a busy machine?", tc.total, elapsed, want)
			}
			if elapsed > 3*want {
				t.Errorf("%d bytes took %v, want %v", tc.total, elapsed, want)
			}
		})
	}
}

func TestUnlimited(t *testing.T) {
	l := New(0)
	start := time.Now()
	for range 1000 {
		if err := l.WaitN(context.Background(), 1<<30); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("unlimited waits took %v", d)
	}
}

// TestSetRateWakesWaiters lifts and raises the limit under a waiting
// stream, which must notice at once rather than finish its old sleep.
func TestSetRateWakesWaiters(t *testing.T) {
	for _, tc := range []struct {
		name string
		to   int64
	}{
		{"lifted", 0},
		{"raised", 8_000_000_000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := New(8_000_000) // 1 MB/s: 4 MB would take 4 s
			done := make(chan error, 1)
			go func() { done <- l.WaitN(context.Background(), 4_000_000) }()
			time.Sleep(50 * time.Millisecond)
			l.SetRate(tc.to)
			select {
			case err := <-done:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(time.Second):
				t.Fatal("the waiter kept its old pace after SetRate")
			}
		})
	}
}

func TestSetRateFromUnlimited(t *testing.T) {
	l := New(0)
	l.SetRate(8_000_000)
	if !granted(t, l, MinBurst) {
		t.Fatal("a limit set on an unlimited bucket did not start full")
	}
	if granted(t, l, 100_000) {
		t.Fatal("the limit set on an unlimited bucket is not applied")
	}
}

func TestCancel(t *testing.T) {
	l := New(8_000_000)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.WaitN(ctx, 10_000_000) }()
	time.Sleep(20 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("WaitN = %v, want context.Canceled", err)
		}
	case <-time.After(time.Second):
		t.Fatal("WaitN did not return when its context was cancelled")
	}
}

// Granted counts what was let through, not what waits: a waiter's bytes
// count once the bucket has earned them.
func TestGranted(t *testing.T) {
	l, clk := newFake(0)
	if !granted(t, l, 3<<20) || l.Granted() != 3<<20 {
		t.Fatalf("unlimited: Granted = %d, want %d", l.Granted(), 3<<20)
	}
	l.SetRate(8 << 20) // 1 MiB/s, burst MinBurst
	if !granted(t, l, MinBurst) {
		t.Fatal("the burst after a limit is set was not granted")
	}
	if got := l.Granted(); got != 3<<20+MinBurst {
		t.Fatalf("after the burst: Granted = %d, want %d", got, 3<<20+MinBurst)
	}
	if granted(t, l, 1<<20) {
		t.Fatal("1 MiB granted at once past the burst")
	}
	// The refused request still holds its ticket (MinBurst bytes, one part);
	// a second of the fake clock earns 1 MiB, of which the bucket lets
	// through what was asked.
	clk.add(time.Second)
	if got, want := l.Granted(), int64(3<<20+2*MinBurst); got != want {
		t.Fatalf("a second later: Granted = %d, want %d", got, want)
	}
}
