package pipeline

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/pkg/nbd"
	"github.com/ferry-v2v/ferry/pkg/testenv"
)

// Helpers for tests and benchmarks against real qemu-img and qemu-nbd.

func requireQemu(tb testing.TB) {
	tb.Helper()
	testenv.LookPath(tb, "qemu-img")
	testenv.LookPath(tb, "qemu-nbd")
	testenv.LookPath(tb, "qemu-io")
}

// fill is data written into a generated disk: random bytes, or one byte
// repeated when pattern is not zero.
type fill struct {
	off, n  int64
	pattern byte
}

// writeSparse creates a sparse raw file of size bytes holding fills.
func writeSparse(tb testing.TB, path string, size int64, seed uint64, fills ...fill) {
	tb.Helper()
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		tb.Fatal(err)
	}
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	buf := make([]byte, 4<<20)
	for _, d := range fills {
		for at := d.off; at < d.off+d.n; {
			b := buf[:min(int64(len(buf)), d.off+d.n-at)]
			if d.pattern != 0 {
				for i := range b {
					b[i] = d.pattern
				}
			} else {
				_, _ = r.Read(b)
			}
			if _, err := f.WriteAt(b, at); err != nil {
				tb.Fatal(err)
			}
			at += int64(len(b))
		}
	}
}

// sparseQcow2 generates a qcow2 of size bytes holding fills and returns
// its path.
func sparseQcow2(tb testing.TB, dir string, size int64, fills ...fill) string {
	tb.Helper()
	raw := filepath.Join(dir, "source.raw")
	writeSparse(tb, raw, size, 1, fills...)
	img := filepath.Join(dir, "source.qcow2")
	testenv.Run(tb, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, img)
	if err := os.Remove(raw); err != nil {
		tb.Fatal(err)
	}
	return img
}

// mapDataBytes sums the data extents qemu-img map reports.
func mapDataBytes(tb testing.TB, image string) int64 {
	tb.Helper()
	var exts []struct {
		Length int64 `json:"length"`
		Data   bool  `json:"data"`
		Zero   bool  `json:"zero"`
	}
	if err := json.Unmarshal([]byte(testenv.Run(tb, "qemu-img", "map", "--output=json", image)), &exts); err != nil {
		tb.Fatal(err)
	}
	var n int64
	for _, e := range exts {
		if e.Data && !e.Zero {
			n += e.Length
		}
	}
	return n
}

// serveReadOnly exports image read-only with qemu-nbd on a unix socket
// until the test ends, and returns the socket.
func serveReadOnly(tb testing.TB, image, format string) string {
	tb.Helper()
	sock, _ := serveReadOnlyPID(tb, image, format)
	return sock
}

// serveReadOnlyPID is serveReadOnly that also returns qemu-nbd's pid.
func serveReadOnlyPID(tb testing.TB, image, format string) (string, int) {
	tb.Helper()
	sock := filepath.Join(tb.TempDir(), "src.sock")
	cmd := exec.Command("qemu-nbd", "--read-only", "--persistent", "--shared=8", "--format="+format,
		"--socket="+sock, image)
	var stderr strings.Builder // probes and cancelled clients make it complain
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if tb.Failed() {
			tb.Logf("qemu-nbd serving %s: %s", image, stderr.String())
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
			return sock, cmd.Process.Pid
		}
		if time.Now().After(deadline) {
			tb.Fatalf("qemu-nbd on %s: %v", sock, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// dialSource connects to an NBD socket for the length of the test.
func dialSource(tb testing.TB, sock string) NBDSource {
	tb.Helper()
	c, err := nbd.Dial(context.Background(), "unix", sock, nbd.Options{MaxInFlight: 64})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return NBDSource{Client: c}
}

// countingSource records the spans read from a Source.
type countingSource struct {
	Source
	mu    sync.Mutex
	reads []span
	// onRead, when set, gets the bytes read so far after every read.
	onRead func(total int64)
	total  int64
}

func (s *countingSource) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := s.Source.ReadAt(ctx, p, off); err != nil {
		return err
	}
	s.mu.Lock()
	s.reads = append(s.reads, span{off, off + int64(len(p))})
	s.total += int64(len(p))
	total, f := s.total, s.onRead
	s.mu.Unlock()
	if f != nil {
		f(total)
	}
	return nil
}

// bytesIn returns the bytes read so far and those of them inside set.
func (s *countingSource) bytesIn(set []span) (all, inside int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return overlap(s.reads, set)
}

// overlap sums the lengths of reads and of their intersections with set,
// which must be sorted and disjoint.
func overlap(reads, set []span) (all, inside int64) {
	for _, r := range reads {
		all += r.end - r.off
		for _, w := range set {
			if lo, hi := max(r.off, w.off), min(r.end, w.end); lo < hi {
				inside += hi - lo
			}
		}
	}
	return all, inside
}

// recordingSink records the spans written to a Sink and calls onWrite
// after each.
type recordingSink struct {
	Sink
	mu      sync.Mutex
	writes  []span
	onWrite func(s span)
}

func (s *recordingSink) WriteAt(ctx context.Context, p []byte, off int64) error {
	if err := s.Sink.WriteAt(ctx, p, off); err != nil {
		return err
	}
	w := span{off, off + int64(len(p))}
	s.mu.Lock()
	s.writes = append(s.writes, w)
	s.mu.Unlock()
	if s.onWrite != nil {
		s.onWrite(w)
	}
	return nil
}

func (s *recordingSink) written() []span {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]span(nil), s.writes...)
}
