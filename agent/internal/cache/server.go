package cache

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// stopTimeout is how long qemu-nbd gets to flush and exit after SIGTERM.
const stopTimeout = 30 * time.Second

// server is a qemu-nbd child process serving one image on a unix socket.
type server struct {
	cmd     *exec.Cmd
	socket  string
	sockDir string // a private directory holding the socket, when the job dir's path is too long
	pidFile string
	stderr  *strings.Builder
	exited  chan struct{}
	waitErr error
}

// startServer runs qemu-nbd with args on socket and records its pid in
// pidFile, so a later Open can stop it if this process dies first. The
// child gets SIGTERM when this process dies.
func startServer(qemuNBD string, args []string, socket, pidFile string) (*server, error) {
	if err := os.Remove(socket); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket: %w", err)
	}
	argv := append([]string{"--persistent", "--socket=" + socket, "--discard=unmap"}, args...)
	cmd := exec.Command(qemuNBD, argv...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	s := &server{cmd: cmd, socket: socket, pidFile: pidFile, stderr: &strings.Builder{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = s.stderr, s.stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", qemuNBD, err)
	}
	go func() {
		s.waitErr = cmd.Wait()
		close(s.exited)
	}()
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o600); err != nil {
		_ = s.stop()
		return nil, fmt.Errorf("record qemu-nbd pid: %w", err)
	}
	return s, nil
}

// exitErr describes how qemu-nbd ended, with what it printed.
func (s *server) exitErr() error {
	return fmt.Errorf("qemu-nbd exited: %v: %s", s.waitErr, strings.TrimSpace(s.stderr.String()))
}

// stop sends SIGTERM, which makes qemu-nbd flush and close the image,
// waits for it (SIGKILL after stopTimeout) and removes its files.
func (s *server) stop() error {
	select {
	case <-s.exited:
	default:
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(stopTimeout):
			_ = s.cmd.Process.Kill()
			<-s.exited
		}
	}
	_ = os.Remove(s.pidFile)
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

// stopStale stops a qemu-nbd that an earlier agent left running, as
// recorded in pidFile, and waits until it has exited. A pid that is no
// longer a qemu-nbd whose command line contains match is left alone.
func stopStale(pidFile, match string) error {
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
