package kvm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// dialSudoLibvirt runs libvirt's stdio bridge (virt-ssh-helper) through
// sudo in a new SSH session and returns the session's input and output as
// one connection to the system libvirtd: libvirt's RPC runs over it as
// over the socket. Closing it ends the session, and the helper with it.
func (c *Conn) dialSudoLibvirt(ctx context.Context) (net.Conn, error) {
	s, err := c.ssh.NewSession()
	if err != nil {
		return nil, fmt.Errorf("open SSH session: %w", err)
	}
	stdin, err := s.StdinPipe()
	if err != nil {
		s.Close()
		return nil, err
	}
	stdout, err := s.StdoutPipe()
	if err != nil {
		s.Close()
		return nil, err
	}
	sc := &sessionConn{session: s, stdin: stdin, stdout: stdout, log: c.log}
	s.Stderr = &sc.stderr
	if err := s.Start(sudoLibvirtCommand); err != nil {
		s.Close()
		return nil, fmt.Errorf("start %s: %w", sudoLibvirtCommand, err)
	}
	return sc, ctx.Err()
}

// sessionConn is an SSH session's stdin and stdout as a net.Conn (no
// deadlines; the forwarder needs none).
type sessionConn struct {
	session *ssh.Session
	stdin   io.WriteCloser
	stdout  io.Reader
	stderr  lockedBuffer
	log     *slog.Logger
	once    sync.Once
}

func (s *sessionConn) Read(p []byte) (int, error)  { return s.stdout.Read(p) }
func (s *sessionConn) Write(p []byte) (int, error) { return s.stdin.Write(p) }

func (s *sessionConn) Close() error {
	s.once.Do(func() {
		s.stdin.Close()
		s.session.Close()
		if msg := strings.TrimSpace(s.stderr.String()); msg != "" {
			s.log.Debug("virt-ssh-helper's connection closed", "stderr", msg)
		}
	})
	return nil
}

func (s *sessionConn) LocalAddr() net.Addr              { return sessionAddr{} }
func (s *sessionConn) RemoteAddr() net.Addr             { return sessionAddr{} }
func (s *sessionConn) SetDeadline(time.Time) error      { return errors.ErrUnsupported }
func (s *sessionConn) SetReadDeadline(time.Time) error  { return errors.ErrUnsupported }
func (s *sessionConn) SetWriteDeadline(time.Time) error { return errors.ErrUnsupported }
func (sessionAddr) Network() string                     { return "ssh-session" }
func (sessionAddr) String() string                      { return sudoLibvirtCommand }

type sessionAddr struct{}

// lockedBuffer is a bytes.Buffer safe for one writer and other readers.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// sudoColdScript starts qemu-nbd as root through sudo in the background
// of the session's shell, says "ready <pid>" (the pid of sudo) once the
// socket exists and waits for it. The session has a pseudo-terminal:
// when the session ends (closed by the agent, the agent dead, the
// connection dropped), sshd hangs the terminal up, the shell and sudo get
// SIGHUP, and sudo relays it to qemu-nbd, which exits: the user needs no
// right to signal root's process. The socket is made with the user's
// umask 000 (the sudoers snippet keeps it for qemu-nbd) so that the user
// may connect to it; the directory, 0700, keeps others out.
func sudoColdScript(sock string, d Disk, bitmap string) string {
	s, p := shellQuote(sock), shellQuote(d.Path)
	args, notReady := nbdBitmapArg(sock, bitmap)
	return strings.Join([]string{
		"rm -f -- " + s,
		"drv=file; if [ -b " + p + " ]; then drv=host_device; fi",
		"umask 000",
		fmt.Sprintf("sudo -n %s --read-only --persistent --shared=4 --export-name=%s --socket=%s%s --image-opts %s </dev/null &",
			SudoQEMUNBD, shellQuote(d.Target), s, args, strings.ReplaceAll(shellQuote(nbdImageOpts(d)), "$drv", "'$drv'")),
		"pid=$!",
		"while " + notReady + "; do if [ ! -d /proc/$pid ]; then wait $pid; " +
			"echo \"qemu-nbd exited with status $?\"; exit 1; fi; sleep 0.1; done",
		"echo ready $pid",
		"wait $pid",
	}, "\n")
}

// waitGone waits (until ctx ends) until the process pid no longer exists
// on the source host: a sudo'd qemu-nbd stopping after its session hung
// up.
func waitGone(ctx context.Context, c *Conn, pid int) error {
	_, err := runRemote(ctx, c.ssh, fmt.Sprintf("while [ -d /proc/%d ]; do sleep 0.1; done", pid))
	return err
}
