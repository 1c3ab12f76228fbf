//go:build integration

package pipeline

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
	"github.com/ferry-v2v/ferry/pkg/ratelimit"
	"github.com/ferry-v2v/ferry/pkg/testenv"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// openCache opens the cache image of disk vda of a job in dir.
func openCache(tb testing.TB, dir string, size int64, compressed bool) *cache.Image {
	tb.Helper()
	img, err := cache.Open(context.Background(), dir, "vda", size, compressed, slog.New(slog.DiscardHandler))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = img.Close() })
	return img
}

func closeCache(tb testing.TB, img *cache.Image) {
	tb.Helper()
	if err := img.Close(); err != nil {
		tb.Fatal(err)
	}
}

// TestCopyIntoCache copies a sparse qcow2, whose size is not whole
// clusters, from a read-only qemu-nbd export into a compressed and a raw
// cache image: identical to the source, and only data extents read.
func TestCopyIntoCache(t *testing.T) {
	requireQemu(t)
	size := 256*mib + 3*512
	src := sparseQcow2(t, t.TempDir(), size,
		fill{0, 3 * mib, 0},
		fill{10*mib + 64*kib, 2*mib - 64*kib, 0xab},
		fill{100*mib + 4*kib, mib, 0},
		fill{size - mib - 1536, mib + 1536, 0})
	want := mapDataBytes(t, src)
	sock := serveReadOnly(t, src, "qcow2")
	for _, compressed := range []bool{true, false} {
		t.Run(fmt.Sprintf("compressed=%v", compressed), func(t *testing.T) {
			img := openCache(t, t.TempDir(), size, compressed)
			counted := &countingSource{Source: dialSource(t, sock)}
			cp, err := LoadCheckpoint(img.CheckpointPath(), size, DefaultChunkSize)
			if err != nil {
				t.Fatal(err)
			}
			st, err := Copy(context.Background(), counted, img, Options{Checkpoint: cp, Logger: testkit.Logger(t)})
			if err != nil {
				t.Fatal(err)
			}
			read, _ := counted.bytesIn(nil)
			if read != want || st.DataBytes != want || st.ZeroBytes != size-want {
				t.Errorf("read %d bytes, stats %+v; qemu-img map says %d bytes of data", read, st, want)
			}
			closeCache(t, img)
			testenv.Run(t, "qemu-img", "compare", "-f", "qcow2", "-F", img.Format(), src, img.Path())
			if !cp.Complete() {
				t.Error("the checkpoint is not complete after the copy")
			}
		})
	}
}

// restartSource is a 512 MiB disk with 256 MiB of random data.
func restartSource(t *testing.T) (image, sock string, size int64) {
	size = 512 * mib
	image = sparseQcow2(t, t.TempDir(), size,
		fill{0, 96 * mib, 0}, fill{128 * mib, 96 * mib, 0}, fill{400*mib + 64*kib, 64 * mib, 0})
	return image, serveReadOnly(t, image, "qcow2"), size
}

// resume copies again into the cache in dir and returns how many of the
// bytes it read lie in before, the spans written by the first run.
func resume(t *testing.T, src, sock, dir string, size int64, before []span) int64 {
	t.Helper()
	img := openCache(t, dir, size, true)
	cp, err := LoadCheckpoint(img.CheckpointPath(), size, DefaultChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	counted := &countingSource{Source: dialSource(t, sock)}
	st, err := Copy(context.Background(), counted, img, Options{Checkpoint: cp, Logger: testkit.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	closeCache(t, img)
	testenv.Run(t, "qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", src, img.Path())
	read, reread := counted.bytesIn(before)
	t.Logf("resumed: %+v, read %d bytes, %d of them already copied", st, read, reread)
	return reread
}

func spanBytes(spans []span) int64 {
	all, _ := overlap(spans, nil)
	return all
}

// TestRestartAfterCancel stops a copy half way by cancelling its context,
// then copies again: only the chunks in flight at the cancel are read again.
func TestRestartAfterCancel(t *testing.T) {
	requireQemu(t)
	src, sock, size := restartSource(t)
	dir := t.TempDir()
	img := openCache(t, dir, size, true)
	cp, err := LoadCheckpoint(img.CheckpointPath(), size, DefaultChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	counted := &countingSource{Source: dialSource(t, sock), onRead: func(total int64) {
		if total >= 128*mib {
			cancel()
		}
	}}
	rec := &recordingSink{Sink: img}
	if _, err := Copy(ctx, counted, rec, Options{Checkpoint: cp, Logger: testkit.Logger(t)}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled copy = %v", err)
	}
	closeCache(t, img)
	before := rec.written()
	copied := spanBytes(before)
	// A cancelled copy saves everything it finished: only the chunks in
	// flight at the cancel are read again.
	if reread, bound := resume(t, src, sock, dir, size, before), int64(DefaultInFlight*DefaultChunkSize); reread > bound {
		t.Errorf("re-read %d of the %d bytes copied before the cancel, want at most %d", reread, copied, bound)
	}
}

// TestRestartAfterKill runs the copy in a helper process and SIGKILLs it
// half way, then copies again: what is read again is bounded by the
// checkpoint's byte cadence and the chunks in flight, however slow the
// machine was.
func TestRestartAfterKill(t *testing.T) {
	requireQemu(t)
	src, sock, size := restartSource(t)
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestKilledCopyHelper$", "-test.v")
	cmd.Env = append(os.Environ(), "FERRY_HELPER_SOCK="+sock, "FERRY_HELPER_DIR="+dir,
		fmt.Sprintf("FERRY_HELPER_SIZE=%d", size))
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var before []span
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		var w span
		if _, err := fmt.Sscanf(sc.Text(), "wrote %d %d", &w.off, &w.end); err != nil {
			continue
		}
		before = append(before, w)
		if spanBytes(before) >= 128*mib && cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
		}
	}
	if err := cmd.Wait(); err == nil {
		t.Fatal("the helper finished its copy before it was killed")
	}
	copied := spanBytes(before)
	if copied < 128*mib {
		t.Fatalf("the helper wrote only %d bytes", copied)
	}
	// What the code promises: at most 2×SaveBytes of finished work not yet
	// durable, plus the chunks in flight.
	bound := int64(2*killedSaveBytes + killedInFlight*DefaultChunkSize)
	if reread := resume(t, src, sock, dir, size, before); reread > bound {
		t.Errorf("re-read %d of the %d bytes copied before the kill, want at most %d", reread, copied, bound)
	}
}

// The killed helper's checkpoint cadence and parallelism, which bound
// what a resume reads again.
const (
	killedSaveBytes = 4 * mib
	killedInFlight  = 8
)

// TestKilledCopyHelper is the process TestRestartAfterKill kills: it
// copies and prints every write once it has returned.
func TestKilledCopyHelper(t *testing.T) {
	sock, dir := os.Getenv("FERRY_HELPER_SOCK"), os.Getenv("FERRY_HELPER_DIR")
	if sock == "" {
		t.Skip("run by TestRestartAfterKill")
	}
	var size int64
	fmt.Sscan(os.Getenv("FERRY_HELPER_SIZE"), &size)
	img := openCache(t, dir, size, true)
	cp, err := LoadCheckpoint(img.CheckpointPath(), size, DefaultChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	cp.SaveBytes = killedSaveBytes
	var mu sync.Mutex
	rec := &recordingSink{Sink: img, onWrite: func(w span) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Printf("wrote %d %d\n", w.off, w.end)
	}}
	// Slowed down so that the kill lands in the middle.
	lim := ratelimit.New(8 * 160 << 20)
	if _, err := Copy(context.Background(), dialSource(t, sock), rec, Options{Checkpoint: cp, Limiter: lim, InFlight: killedInFlight}); err != nil {
		t.Fatal(err)
	}
}

// TestLimitedRate copies 40 MiB of data limited to 8 MiB/s: about 5 s.
func TestLimitedRate(t *testing.T) {
	requireQemu(t)
	size := 256 * mib
	src := sparseQcow2(t, t.TempDir(), size, fill{0, 20 * mib, 0}, fill{64 * mib, 20 * mib, 0})
	sock := serveReadOnly(t, src, "qcow2")
	img := openCache(t, t.TempDir(), size, true)
	lim := ratelimit.New(8 * 8 << 20)
	start := time.Now()
	st, err := Copy(context.Background(), dialSource(t, sock), img, Options{Limiter: lim})
	if err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	rate := float64(st.DataBytes) / elapsed.Seconds()
	t.Logf("%d bytes in %v: %.2f MiB/s", st.DataBytes, elapsed, rate/float64(mib))
	// Never above the limit (less the bucket's burst); below it only as
	// much as a busy machine slows the copy.
	if want := float64(8 * mib); rate > want*1.15 {
		t.Errorf("measured %.2f MiB/s, above the 8 MiB/s limit", rate/float64(mib))
	} else if rate < want/3 {
		t.Errorf("measured %.2f MiB/s, far below the 8 MiB/s limit", rate/float64(mib))
	}
}

// TestCancelPromptly cancels a copy into a real cache image.
func TestCancelPromptly(t *testing.T) {
	requireQemu(t)
	size := 256 * mib
	src := sparseQcow2(t, t.TempDir(), size, fill{0, 64 * mib, 0})
	sock := serveReadOnly(t, src, "qcow2")
	img := openCache(t, t.TempDir(), size, true)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(300*time.Millisecond, cancel)
	start := time.Now()
	_, err := Copy(ctx, dialSource(t, sock), img, Options{Limiter: ratelimit.New(8 * 32 << 20)})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Copy = %v, want context.Canceled", err)
	}
	if d := time.Since(start) - 300*time.Millisecond; d > time.Second {
		t.Fatalf("Copy returned %v after the cancel", d)
	}
}
