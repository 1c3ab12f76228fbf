package backoff

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestRetry(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	denied := errors.New("login refused")
	p := Policy{Budget: 300 * time.Millisecond, Min: 20 * time.Millisecond, Max: 50 * time.Millisecond}
	cases := []struct {
		name        string
		failures    int   // attempts failing before one succeeds
		err         error // what they fail with
		wantErr     string
		minAttempts int
		maxAttempts int
	}{
		{"succeeds at once", 0, nil, "", 1, 1},
		{"succeeds after transport errors", 3, refused, "", 4, 4},
		{"final error stops at once", 10, denied, "login refused", 1, 1},
		{"budget spent", 1000, refused, "gave up after", 4, 20},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			n, err := Retry(context.Background(), p, nil, Transport, func(context.Context, int, time.Time) error {
				if c.failures > 0 {
					c.failures--
					return c.err
				}
				return nil
			})
			if c.wantErr == "" && err != nil || c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)) {
				t.Fatalf("err = %v, want %q", err, c.wantErr)
			}
			if n < c.minAttempts || n > c.maxAttempts {
				t.Errorf("%d attempts, want %d to %d", n, c.minAttempts, c.maxAttempts)
			}
			if c.wantErr == "gave up after" {
				if d := time.Since(start); d < p.Budget || d > p.Budget+time.Second {
					t.Errorf("gave up after %s, want about the budget %s", d, p.Budget)
				}
				if !errors.Is(err, syscall.ECONNREFUSED) {
					t.Errorf("the last attempt's error is lost: %v", err)
				}
			}
		})
	}
}

func TestTransport(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("GET x: %w", &net.OpError{Op: "read", Err: syscall.ECONNRESET}), true},
		{fmt.Errorf("post: %w", io.EOF), true},
		{io.ErrUnexpectedEOF, true},
		{context.DeadlineExceeded, true}, // a net.Error that timed out
		{errors.New("ServerFaultCode: Cannot complete login"), false},
		{errors.New("no such VM"), false},
		{nil, false},
	} {
		if got := Transport(c.err); got != c.want {
			t.Errorf("Transport(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

func TestPolicyWait(t *testing.T) {
	p := Policy{Min: 100 * time.Millisecond, Max: time.Second}
	for attempt, want := range map[int]time.Duration{1: 100 * time.Millisecond, 2: 200 * time.Millisecond,
		4: 800 * time.Millisecond, 5: time.Second, 50: time.Second} {
		if got := p.Wait(attempt); got != want {
			t.Errorf("Wait(%d) = %v, want %v", attempt, got, want)
		}
	}
}
