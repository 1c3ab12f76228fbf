package nbd

import (
	"bytes"
	"context"
	"errors"
	"os"
	"sync"
	"testing"
	"time"
)

// Failures against real servers: server errors, cancellation, a dying
// server, Close with requests in flight.

func TestServerErrorIsPerRequest(t *testing.T) {
	trigger := t.TempDir() + "/fail-reads"
	if err := os.WriteFile(trigger, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	srv := nbdkit(t, "--filter=error", "memory", "8M", "error-pread=EIO", "error-pread-rate=100%", "error-pread-file="+trigger)
	for _, tc := range []struct {
		name string
		opts Options
	}{{"structured", Options{}}, {"simple", Options{DisableStructuredReplies: true}}} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(trigger, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			c := dial(t, srv.sock, tc.opts)
			ctx := testCtx(t)
			var wg sync.WaitGroup
			rerrs, werrs := make([]error, 8), make([]error, 8)
			for i := range 8 {
				wg.Go(func() { rerrs[i] = c.ReadAt(ctx, make([]byte, 64*KiB), int64(i)*64*KiB) })
				wg.Go(func() { werrs[i] = c.WriteAt(ctx, pattern(int64(i)*MiB, 64*KiB), int64(i)*MiB, false) })
			}
			wg.Wait()
			for i := range 8 {
				var e *Error
				if !errors.As(rerrs[i], &e) || e.Errno != EIO || e.Op != "read" {
					t.Errorf("read %d: %v, want EIO", i, rerrs[i])
				}
				if werrs[i] != nil {
					t.Errorf("write %d failed beside failing reads: %v", i, werrs[i])
				}
			}
			t.Logf("read error reads: %v", rerrs[0])
			if err := os.Remove(trigger); err != nil {
				t.Fatal(err)
			}
			p := make([]byte, 64*KiB)
			if err := c.ReadAt(ctx, p, 7*MiB); err != nil || !bytes.Equal(p, pattern(7*MiB, 64*KiB)) {
				t.Errorf("read after errors: %v", err)
			}
		})
	}
}

func TestCancel(t *testing.T) {
	srv := nbdkit(t, "--filter=delay", "pattern", "8M", "rdelay=1")
	c := dial(t, srv.sock, Options{MaxInFlight: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	p := make([]byte, MiB)
	start := time.Now()
	err := c.ReadAt(ctx, p, 0)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("ReadAt = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 800*time.Millisecond {
		t.Errorf("cancelled read returned after %v, not when cancelled", d)
	}
	// The abandoned reply is drained when it comes, which frees the only
	// in-flight slot, and the connection goes on working.
	q := make([]byte, 4*KiB)
	if err := c.ReadAt(testCtx(t), q, 4*MiB); err != nil {
		t.Fatal(err)
	}
	if w := be.Uint64(q); w != 4*MiB {
		t.Fatalf("word at 4 MiB = %d", w)
	}
	if !bytes.Equal(p, make([]byte, MiB)) {
		t.Error("the reader wrote into the buffer of a cancelled read")
	}
}

func TestConnectionFailureFailsPending(t *testing.T) {
	srv := nbdkit(t, "--filter=delay", "memory", "8M", "rdelay=2")
	c := dial(t, srv.sock, Options{})
	ctx := testCtx(t)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range 4 {
		wg.Go(func() { errs[i] = c.ReadAt(ctx, make([]byte, 4*KiB), int64(i)*4*KiB) })
	}
	time.Sleep(200 * time.Millisecond) // let the reads reach the server
	_ = srv.cmd.Process.Kill()
	wg.Wait()
	for i, err := range errs {
		if !errors.Is(err, ErrConnection) {
			t.Errorf("read %d: %v, want ErrConnection", i, err)
		}
	}
	t.Logf("pending read got: %v", errs[0])
	if err := c.Flush(ctx); !errors.Is(err, ErrConnection) {
		t.Errorf("Flush after failure: %v", err)
	}
}

func TestClose(t *testing.T) {
	srv := nbdkit(t, "--filter=delay", "memory", "8M", "rdelay=2")
	c := dial(t, srv.sock, Options{})
	ctx := testCtx(t)
	done := make(chan error, 1)
	go func() { done <- c.ReadAt(ctx, make([]byte, 4*KiB), 0) }()
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Errorf("pending read after Close: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Close took %v", d)
	}
	if err := c.ReadAt(ctx, make([]byte, 1), 0); !errors.Is(err, ErrClosed) {
		t.Errorf("read after Close: %v", err)
	}
	c.Close() // twice is fine
}

func TestDisconnectWaitsForRequests(t *testing.T) {
	srv := nbdkit(t, "--filter=delay", "pattern", "8M", "rdelay=300ms")
	c := dial(t, srv.sock, Options{})
	ctx := testCtx(t)
	done := make(chan error, 1)
	q := make([]byte, 4*KiB)
	go func() { done <- c.ReadAt(ctx, q, 4*MiB) }()
	time.Sleep(50 * time.Millisecond)
	if err := c.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil || be.Uint64(q) != 4*MiB {
		t.Errorf("read in flight during Disconnect: %v", err)
	}
	if err := c.ReadAt(ctx, q, 0); !errors.Is(err, ErrClosed) {
		t.Errorf("read after Disconnect: %v", err)
	}
}
