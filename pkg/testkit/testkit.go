// Package testkit is what Ferry's tests share: a logger that writes
// through the test, and polling with a deadline instead of sleeping. Only
// tests (and test-helper packages) import it; make check's import check
// keeps it out of production code.
package testkit

import (
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Logger logs at debug level and above through t.
func Logger(t testing.TB) *slog.Logger { return LoggerAt(t, slog.LevelDebug) }

// LoggerAt logs at level and above through t. Lines logged once the test
// has finished (a goroutine the test started, still winding down) are
// dropped: created before what it logs for, its cleanup runs after theirs.
func LoggerAt(t testing.TB, level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(Writer(t), &slog.HandlerOptions{Level: level}))
}

// Writer logs what is written to it through t, a line at a time as
// written (for a child process's output); what comes after the test has
// finished is dropped.
func Writer(t testing.TB) io.Writer {
	w := &writer{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return w
}

type writer struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		func() {
			defer func() { _ = recover() }() // a line after the test ended
			w.t.Log(strings.TrimRight(string(p), "\n"))
		}()
	}
	return len(p), nil
}

// pollEvery is how often WaitFor looks.
const pollEvery = 10 * time.Millisecond

// WaitFor polls cond until it holds, failing the test with what after
// timeout.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(pollEvery)
	}
}

// FreeAddr is a loopback host:port nothing listens on at the moment, for
// a child process to listen on (FreePort).
func FreeAddr(t testing.TB) string {
	t.Helper()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePort(t)))
}

// Ports FreePort hands out lie below Linux's default ephemeral range
// (32768–60999): the kernel's pick for port 0, released at once, can be
// taken as the source port of any outgoing connection before the child
// process binds it ("address already in use"), which parallel tests made
// happen; a port below that range is only ever taken by a listener.
const (
	freePortLow  = 20000
	freePortHigh = 32768
)

var handedOut struct {
	sync.Mutex
	ports map[int]bool
}

// FreePort is a loopback TCP port nothing listens on at the moment, drawn
// at random below the ephemeral range and never handed out twice by this
// process (another test binary drawing the same one is a chance of one
// in several thousand, and a listener's own retry covers it).
func FreePort(t testing.TB) int {
	t.Helper()
	handedOut.Lock()
	defer handedOut.Unlock()
	if handedOut.ports == nil {
		handedOut.ports = map[int]bool{}
	}
	for range 1000 {
		port := freePortLow + rand.IntN(freePortHigh-freePortLow)
		if handedOut.ports[port] {
			continue
		}
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		_ = ln.Close()
		handedOut.ports[port] = true
		return port
	}
	t.Fatalf("no free loopback port in %d–%d", freePortLow, freePortHigh-1)
	return 0
}
