package nbd

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// Helpers that run real NBD servers (qemu-nbd, nbdkit) on unix sockets.

// requireTools skips the test when a tool is missing, unless CI is set, in
// which case a missing tool is a failure.
func requireTools(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			msg := fmt.Sprintf("%s not installed: run scripts/deps.sh", n)
			if os.Getenv("CI") != "" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
}

// server is a running NBD server process.
type server struct {
	sock     string
	cmd      *exec.Cmd
	exited   chan struct{}
	waitErr  error
	stopOnce sync.Once
}

// stop terminates the server and waits for it. It is safe to call twice.
func (s *server) stop(t testing.TB) {
	s.stopOnce.Do(func() {
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(5 * time.Second):
			_ = s.cmd.Process.Kill()
			<-s.exited
			t.Logf("%s did not stop on SIGTERM; killed", s.cmd.Path)
		}
	})
}

// startServer runs name with args (which must make it listen on sock),
// waits until sock accepts connections and stops it when the test ends.
func startServer(t testing.TB, sock, name string, args ...string) *server {
	t.Helper()
	requireTools(t, name)
	logPath := filepath.Join(t.TempDir(), name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	s := &server{sock: sock, cmd: exec.Command(name, args...), exited: make(chan struct{})}
	s.cmd.Stdout, s.cmd.Stderr = logFile, logFile
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { // owned by stop, which waits for exited
		s.waitErr = s.cmd.Wait()
		close(s.exited)
	}()
	t.Cleanup(func() { s.stop(t) })
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if conn, err := net.Dial("unix", sock); err == nil {
			conn.Close()
			return s
		}
		select {
		case <-s.exited:
			out, _ := os.ReadFile(logPath)
			t.Fatalf("%s %s exited: %v\n%s", name, strings.Join(args, " "), s.waitErr, out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not listen on %s within 10s", name, sock)
		}
	}
}

// qemuNBD serves img with qemu-nbd; args go before the image, e.g. "-f",
// "raw". It returns the socket path.
func qemuNBD(t testing.TB, img string, args ...string) *server {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "qemu-nbd.sock")
	all := append([]string{"-t", "-k", sock}, args...)
	if img != "" {
		all = append(all, img)
	}
	return startServer(t, sock, "qemu-nbd", all...)
}

// nbdkit runs nbdkit in the foreground with args (plugin, filters, params).
func nbdkit(t testing.TB, args ...string) *server {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nbdkit.sock")
	return startServer(t, sock, "nbdkit", append([]string{"-f", "-U", sock}, args...)...)
}

// run runs a command and fails the test with its output if it fails.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	requireTools(t, name)
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// newImage creates an image of format and size in a temporary directory.
func newImage(t testing.TB, format string, size int64, opts ...string) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "disk."+format)
	args := append([]string{"create", "-q", "-f", format}, opts...)
	run(t, "qemu-img", append(args, img, fmt.Sprint(size))...)
	return img
}

// qemuIO runs qemu-io commands (e.g. "write -P 0xab 0 1M") on img.
func qemuIO(t testing.TB, format, img string, cmds ...string) {
	t.Helper()
	args := []string{"-f", format}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	run(t, "qemu-io", append(args, img)...)
}

// dial connects to sock and closes the client when the test ends.
func dial(t testing.TB, sock string, opts Options) *Client {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testkit.Logger(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, "unix", sock, opts)
	if err != nil {
		t.Fatalf("dial %s: %v", sock, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	t.Cleanup(cancel)
	return ctx
}
