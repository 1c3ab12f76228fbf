package target

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/pkg/testenv"
	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// requireTools stops the test unless it runs as root with the programs:
// skipped on a developer's machine, failed in CI.
func requireTools(t testing.TB, names ...string) {
	t.Helper()
	testenv.RequireRoot(t)
	for _, n := range names {
		testenv.LookPath(t, n)
	}
}

// run runs a program and fails the test with its output when it fails.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// serveImage serves an image read-only with qemu-nbd, as the cache does,
// until the test ends.
func serveImage(t testing.TB, image, format string) Endpoint {
	t.Helper()
	sock := filepath.Join(shortTempDir(t), "src.sock")
	cmd := exec.Command("qemu-nbd", "--read-only", "--persistent", "--shared=8", "--socket="+sock, "--format="+format, image)
	cmd.Stderr = testkit.Writer(t)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			return Endpoint{Socket: sock}
		}
		if time.Now().After(deadline) {
			t.Fatalf("qemu-nbd on %s did not start", image)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// shortTempDir is a temporary directory whose paths fit a unix socket.
func shortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ft-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// fakeCommander records argv and answers from a table of outputs and errors.
type fakeCommander struct {
	mu    sync.Mutex
	argv  [][]string
	fail  map[string]string // argv[0] → output of a failure
	calls map[string]int
}

func (f *fakeCommander) Run(_ context.Context, name string, args ...string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.argv = append(f.argv, append([]string{name}, args...))
	if f.calls == nil {
		f.calls = map[string]int{}
	}
	f.calls[name]++
	if out, ok := f.fail[name]; ok && f.calls[name] == 1 {
		return []byte(out), &CommandError{Argv: append([]string{name}, args...), Output: out, Err: fmt.Errorf("exit status 5")}
	}
	return nil, nil
}

func (f *fakeCommander) commands() [][]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]string(nil), f.argv...)
}
