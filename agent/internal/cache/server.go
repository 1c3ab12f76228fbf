package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ferry-v2v/ferry/pkg/nbd"
)

// stopTimeout is how long qemu-nbd gets to flush and exit after SIGTERM.
const stopTimeout = 30 * time.Second

// Server is a qemu-nbd child process serving one image on a unix socket.
// It is the one way the agent runs qemu-nbd: for cache images, read-only
// exports of them, and target volumes during an upload. The child gets
// SIGTERM when the agent dies; with a pid file, a later agent stops one
// an earlier agent left behind (StopStale).
type Server struct {
	cmd     *exec.Cmd
	socket  string
	addr    string
	sockDir string // a private directory holding the socket, when the job dir's path is too long
	pidFile string
	stderr  *strings.Builder
	exited  chan struct{}
	waitErr error
	// up: a handshake (or, on TCP, the greeting) completed once. A
	// server never up served no one, so has nothing to flush.
	up atomic.Bool
}

// ServerConfig describes one qemu-nbd.
type ServerConfig struct {
	// Program is qemu-nbd's path; "" is qemu-nbd on PATH.
	Program string
	// Args are its arguments, which name Socket with --socket.
	Args []string
	// Socket is the unix socket it serves on; a stale one is removed first.
	Socket string
	// Addr, instead of Socket, is the TCP host:port it serves on, which
	// Args name with --bind and --port (a volume served to another host's
	// agent over the migration network, with TLS).
	Addr string
	// PidFile, when set, records the child's pid so that a later agent
	// can stop it with StopStale if this one dies first.
	PidFile string
}

// QemuEnv is the environment the agent runs qemu-nbd and qemu-img in:
// its own, with glibc's malloc told to keep the request buffers QEMU
// allocates and frees for every NBD request and convert step in its heap
// (buffers up to 4 MiB never mmapped, up to 64 MiB of freed heap kept
// rather than returned to the kernel). Measured with the default dynamic
// thresholds, a qemu-nbd taking 1 GiB of writes onto a qcow2 faulted in
// 263k-267k pages whatever the request size (256 KiB to 4 MiB) and took
// 1.0-1.4 CPU-seconds; with these, 4k pages and 0.66 s at 256 KiB (4 MiB
// requests, over the threshold, fault as before). On a whole job of 1 GiB
// its qemu-nbd and qemu-img processes took 4.4-4.6 CPU-seconds against
// 4.9-6.0. Settings the agent's own environment makes win.
func QemuEnv() []string {
	env := os.Environ()
	for _, kv := range []string{"MALLOC_MMAP_THRESHOLD_=4194304", "MALLOC_TRIM_THRESHOLD_=67108864"} {
		if _, ok := os.LookupEnv(kv[:strings.IndexByte(kv, '=')]); !ok {
			env = append(env, kv)
		}
	}
	return env
}

// StartServer runs qemu-nbd as c says. The caller waits for it with
// Ready or Dial and ends it with Stop.
func StartServer(c ServerConfig) (*Server, error) {
	if c.Program == "" {
		c.Program = qemuNBD
	}
	if err := checkListen(c); err != nil {
		return nil, err
	}
	cmd := exec.Command(c.Program, c.Args...)
	cmd.Env = QemuEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	s := &Server{cmd: cmd, socket: c.Socket, addr: c.Addr, pidFile: c.PidFile, stderr: &strings.Builder{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = s.stderr, s.stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", c.Program, err)
	}
	go func() {
		s.waitErr = cmd.Wait()
		close(s.exited)
	}()
	if c.PidFile == "" {
		return s, nil
	}
	if err := os.WriteFile(c.PidFile, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o600); err != nil {
		_ = s.Stop()
		return nil, fmt.Errorf("record qemu-nbd pid: %w", err)
	}
	return s, nil
}

// checkListen checks that c's arguments name where it listens, and
// removes a stale socket.
func checkListen(c ServerConfig) error {
	if c.Addr != "" {
		host, port, err := net.SplitHostPort(c.Addr)
		if err != nil || !slices.Contains(c.Args, "--bind="+host) || !slices.Contains(c.Args, "--port="+port) {
			return fmt.Errorf("cache: qemu-nbd arguments %q do not name the address %s", c.Args, c.Addr)
		}
		return nil
	}
	if !slices.Contains(c.Args, "--socket="+c.Socket) {
		return fmt.Errorf("cache: qemu-nbd arguments %q do not name the socket %s", c.Args, c.Socket)
	}
	if err := os.Remove(c.Socket); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale socket: %w", err)
	}
	return nil
}

// Socket is the unix socket the server listens on.
func (s *Server) Socket() string { return s.socket }

// Addr is the TCP address the server listens on, "" on a unix socket.
func (s *Server) Addr() string { return s.addr }

// Ready waits until the server completes an NBD handshake, or fails when
// it exits or ctx ends first. On TCP (a TLS export, which only its one
// peer may complete a handshake with) it waits for the NBD greeting.
func (s *Server) Ready(ctx context.Context) error {
	if s.addr != "" {
		return s.greeted(ctx)
	}
	c, err := s.Dial(ctx, nil)
	if err != nil {
		return err
	}
	return c.Close()
}

// writeRequest is the largest write request sent to the cache's qemu-nbd:
// 2 MiB, a whole chunk of the copy, which then costs one request and one
// reply rather than eight. Under QemuEnv's malloc settings qemu-nbd keeps
// buffers of that size in its heap (the source's QEMU, a VM's, has no such
// settings: it is read at nbd.DefaultMaxRequest). Measured on the
// compressed cache, per GiB copied: the copier's context switches down
// from 22k to 16.5k, qemu-nbd's minor faults 21k against 9.7k at 256 KiB
// (about 22 pages a request of 512: no fresh buffer each).
const writeRequest = 2 << 20

// Dial connects to the server once it completes an NBD handshake, within
// readyTimeout; it fails at once when qemu-nbd exits.
func (s *Server) Dial(ctx context.Context, log *slog.Logger) (*nbd.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	for {
		c, err := nbd.Dial(ctx, "unix", s.socket, nbd.Options{MaxInFlight: 64, MaxWriteRequest: writeRequest, Logger: log})
		if err == nil {
			s.up.Store(true)
			return c, nil
		}
		select {
		case <-s.exited:
			return nil, s.exitErr()
		case <-ctx.Done():
			// ctx's error too: a cancelled job says so, not a server
			// that failed to come up.
			return nil, fmt.Errorf("qemu-nbd not ready: %w: %w", ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// greeted waits until a TCP connection to the server gets the NBD
// greeting, within readyTimeout; it fails at once when qemu-nbd exits.
func (s *Server) greeted(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	for {
		err := readGreeting(ctx, s.addr)
		if err == nil {
			s.up.Store(true)
			return nil
		}
		select {
		case <-s.exited:
			return s.exitErr()
		case <-ctx.Done():
			return fmt.Errorf("qemu-nbd not ready on %s: %w: %w", s.addr, ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func readGreeting(ctx context.Context, addr string) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	var g [16]byte
	if _, err := io.ReadFull(conn, g[:]); err != nil {
		return err
	}
	if string(g[:8]) != "NBDMAGIC" {
		return fmt.Errorf("%s is not an NBD server", addr)
	}
	return nil
}

// exitErr describes how qemu-nbd ended, with what it printed.
func (s *Server) exitErr() error {
	return fmt.Errorf("qemu-nbd exited: %v: %s", s.waitErr, strings.TrimSpace(s.stderr.String()))
}

// Stop sends SIGTERM, which makes qemu-nbd flush and close the image,
// waits for it (SIGKILL after stopTimeout) and removes its files. It
// reports how qemu-nbd ended, unless by that SIGTERM.
//
// A server that never came up (Ready or Dial failed, a cancelled job's
// say) is killed at once: it served no one, so there is nothing to flush,
// and a qemu-nbd still starting has been seen to sit out the whole
// stopTimeout over SIGTERM (a cancelled upload took 30 s to return).
func (s *Server) Stop() error {
	if !s.up.Load() {
		s.abandon()
		return nil
	}
	return s.stop(stopTimeout)
}

// abandon stops a read-only server that never served anyone: there is
// nothing to flush, so it does not wait for SIGTERM (a qemu-nbd still
// starting has been seen to take the whole stopTimeout over it).
func (s *Server) abandon() { _ = s.stop(0) }

func (s *Server) stop(grace time.Duration) error {
	select {
	case <-s.exited:
	default:
		if grace == 0 {
			_ = s.cmd.Process.Kill()
			<-s.exited
			break
		}
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(grace):
			_ = s.cmd.Process.Kill()
			<-s.exited
		}
	}
	if s.pidFile != "" {
		_ = os.Remove(s.pidFile)
	}
	_ = os.Remove(s.socket)
	if s.sockDir != "" {
		_ = os.RemoveAll(s.sockDir)
	}
	var exit *exec.ExitError
	if s.waitErr != nil && !(errors.As(s.waitErr, &exit) && exit.Sys().(syscall.WaitStatus).Signal() == syscall.SIGTERM) {
		return s.exitErr()
	}
	return nil
}

// StopStale stops a qemu-nbd that an earlier agent left running, as
// recorded in pidFile, and waits until it has exited. A pid that is no
// longer a qemu-nbd whose command line contains match is left alone.
func StopStale(pidFile, match string) error {
	b, err := os.ReadFile(pidFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 || !servesImage(pid, match) {
		return os.Remove(pidFile)
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(stopTimeout)
	for servesImage(pid, match) {
		if time.Now().After(deadline) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return os.Remove(pidFile)
}

// servesImage reports whether pid is a live qemu-nbd whose command line
// contains match.
func servesImage(pid int, match string) bool {
	cmdline, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return false
	}
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err == nil {
		// A zombie has released its files: state Z after "(comm) ".
		if i := strings.LastIndexByte(string(stat), ')'); i > 0 && strings.HasPrefix(string(stat[i:]), ") Z") {
			return false
		}
	}
	args := strings.Split(string(cmdline), "\x00")
	if len(args) == 0 || filepath.Base(args[0]) != "qemu-nbd" {
		return false
	}
	return strings.Contains(string(cmdline), match)
}
