package kvm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
)

// forwarder listens on a unix socket in a private temporary directory
// (0700) and joins every accepted connection to one that dial opens, such
// as a direct-streamlocal channel to the source's libvirt socket. Close
// stops it and waits for all of its goroutines.
type forwarder struct {
	dir  string
	ln   net.Listener
	dial func(ctx context.Context) (net.Conn, error)
	log  *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	done  bool
}

func newForwarder(dial func(ctx context.Context) (net.Conn, error), log *slog.Logger) (*forwarder, error) {
	dir, err := os.MkdirTemp("", "ferry-kvm-")
	if err != nil {
		return nil, fmt.Errorf("local socket directory: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("local socket directory: %w", err)
	}
	ln, err := net.Listen("unix", filepath.Join(dir, "sock"))
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("listen on local socket: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := &forwarder{dir: dir, ln: ln, dial: dial, log: log, ctx: ctx, cancel: cancel,
		conns: make(map[net.Conn]struct{})}
	f.wg.Go(f.serve)
	return f, nil
}

// Path is the local socket's path.
func (f *forwarder) Path() string { return f.ln.Addr().String() }

func (f *forwarder) serve() {
	for {
		local, err := f.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				f.log.Warn("local socket accept failed", "err", err)
			}
			return
		}
		if !f.track(local) {
			local.Close()
			return
		}
		f.wg.Go(func() { f.join(local) })
	}
}

// join connects local to a freshly dialled remote and copies both ways
// until either side ends.
func (f *forwarder) join(local net.Conn) {
	defer f.untrack(local)
	remote, err := f.dial(f.ctx)
	if err != nil {
		f.log.Warn("forward local connection", "err", err)
		return
	}
	if !f.track(remote) {
		remote.Close()
		return
	}
	defer f.untrack(remote)
	var copies sync.WaitGroup
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		// Either direction ending ends the pair.
		local.Close()
		remote.Close()
	}
	copies.Go(func() { pipe(remote, local) })
	copies.Go(func() { pipe(local, remote) })
	copies.Wait()
}

// track records an open connection so Close can end it; false means the
// forwarder is closing.
func (f *forwarder) track(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.done {
		return false
	}
	f.conns[c] = struct{}{}
	return true
}

func (f *forwarder) untrack(c net.Conn) {
	c.Close()
	f.mu.Lock()
	delete(f.conns, c)
	f.mu.Unlock()
}

// Close stops accepting, ends every forwarded connection, waits for the
// goroutines and removes the directory. It may be called more than once.
func (f *forwarder) Close() error {
	f.mu.Lock()
	already := f.done
	f.done = true
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	if already {
		return nil
	}
	f.cancel()
	err := f.ln.Close()
	f.wg.Wait()
	return errors.Join(err, os.RemoveAll(f.dir))
}
