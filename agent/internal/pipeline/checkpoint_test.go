package pipeline

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// fromData describes data at 512-byte granularity: all-zero sectors are
// zero extents.
func fromData(data []byte) *memSource {
	s := &memSource{data: data}
	for off := int64(0); off < int64(len(data)); off += 512 {
		zero := isZero(data[off:min(off+512, int64(len(data)))])
		n := min(512, int64(len(data))-off)
		if k := len(s.extents); k > 0 && s.extents[k-1].Zero == zero {
			s.extents[k-1].Length += n
			continue
		}
		s.extents = append(s.extents, Extent{Offset: off, Length: n, Zero: zero})
	}
	return s
}

func TestCheckpointFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vda.ckpt")
	const size, chunk = 10*mib + 512, 2 * mib // 6 chunks, the last short
	cp, err := LoadCheckpoint(path, size, chunk)
	if err != nil {
		t.Fatal(err)
	}
	cp.begin()
	if cp.Chunks() != 6 || cp.Done(0) || cp.mayBeWritten(0) || cp.Complete() {
		t.Fatal("a new checkpoint claims something")
	}
	if err := cp.reserve(4*mib, 0); err != nil {
		t.Fatal(err)
	}
	if err := cp.commit([]int{0, 5}); err != nil {
		t.Fatal(err)
	}
	load := func() *Checkpoint {
		t.Helper()
		cp, err := LoadCheckpoint(path, size, chunk)
		if err != nil {
			t.Fatal(err)
		}
		cp.begin()
		return cp
	}
	cp = load()
	if !cp.Done(0) || cp.Done(1) || !cp.Done(5) || !cp.mayBeWritten(1) || cp.mayBeWritten(2) {
		t.Fatal("the reloaded checkpoint lost its marks or frontier")
	}
	if err := cp.commit([]int{1, 2, 3, 4}); err != nil {
		t.Fatal(err)
	}
	if !load().Complete() {
		t.Fatal("all chunks marked but not complete")
	}

	// A damaged file, or one for another disk, trusts nothing.
	b, _ := os.ReadFile(path)
	b[40] ^= 1
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	cp = load()
	if cp.Done(0) || !cp.mayBeWritten(5) {
		t.Fatal("a damaged checkpoint was trusted")
	}
	other, err := LoadCheckpoint(path, size+512, chunk)
	if err != nil || other.Done(0) {
		t.Fatal("a checkpoint of another size was trusted")
	}
}

// TestResumeAfterCancel cancels a copy half way and starts it again with
// the checkpoint reloaded from its file: the second run re-reads less
// than 20 % of what the first one wrote.
func TestResumeAfterCancel(t *testing.T) {
	data := layout(100*mib, 12, span{0, 30 * mib}, span{40 * mib, 70 * mib}, span{80*mib + 4*kib, 95 * mib})
	data.delay = 2 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	data.onRead = func(total int64) {
		if total >= 40*mib {
			cancel()
		}
	}
	path := filepath.Join(t.TempDir(), "vda.ckpt")
	dst := newMemSink(data.Size())
	cp, err := LoadCheckpoint(path, data.Size(), DefaultChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	st1, err := Copy(ctx, data, dst, Options{Checkpoint: cp, InFlight: 8, Logger: testkit.Logger(t)})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("first copy = %v, want context.Canceled", err)
	}
	before := dst.written()
	src := fromData(data.data)
	cp, err = LoadCheckpoint(path, data.Size(), DefaultChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	st2, err := Copy(context.Background(), src, dst, Options{Checkpoint: cp, Logger: testkit.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	_, reread := src.readBytes(before)
	t.Logf("first run %+v, second %+v, re-read %d of %d", st1, st2, reread, st1.DataBytes)
	if reread*5 >= st1.DataBytes {
		t.Errorf("re-read %d bytes of the %d already copied", reread, st1.DataBytes)
	}
	if !equalBytes(dst.data, data.data) || !cp.Complete() {
		t.Fatal("the resumed copy did not finish the image")
	}
	if st2.SkippedBytes+st2.DataBytes != dataBytes(data) {
		t.Errorf("skipped %d + copied %d != %d", st2.SkippedBytes, st2.DataBytes, dataBytes(data))
	}
}

// TestResumeAfterCrash breaks the sink in the middle of a copy, so no
// final save happens, then resumes. After a power cut the image holds only
// what was flushed; after a killed process it also holds later writes,
// and the source has since lost data in chunks that were not done. Either
// way every done mark is backed by durable data, and the resumed copy
// rewrites the rest (zeroing first, as a compressed image needs) to match
// the source.
func TestResumeAfterCrash(t *testing.T) {
	for _, powerCut := range []bool{true, false} {
		name := map[bool]string{true: "power cut", false: "process killed"}[powerCut]
		t.Run(name, func(t *testing.T) {
			first := layout(64*mib, 13, span{0, 30 * mib}, span{31*mib + 8*kib, 60 * mib})
			path := filepath.Join(t.TempDir(), "vda.ckpt")
			cp, err := LoadCheckpoint(path, first.Size(), DefaultChunkSize)
			if err != nil {
				t.Fatal(err)
			}
			cp.SaveBytes = 8 * mib
			dst := newMemSink(first.Size())
			first.delay = 2 * time.Millisecond
			dst.breakWrites = 16
			if _, err := Copy(context.Background(), first, dst, Options{Checkpoint: cp, InFlight: 4}); !errors.Is(err, errBroken) {
				t.Fatalf("first copy = %v, want the sink's error", err)
			}
			if powerCut {
				dst.crash()
			}
			dst.breakWrites, dst.dead = 0, false
			cp, err = LoadCheckpoint(path, first.Size(), DefaultChunkSize)
			if err != nil {
				t.Fatal(err)
			}
			second := append([]byte(nil), first.data...)
			done := 0
			for i := range cp.Chunks() {
				lo, hi := int64(i)*DefaultChunkSize, min(first.Size(), int64(i+1)*DefaultChunkSize)
				if cp.Done(i) {
					done++
					if !equalBytes(dst.durable[lo:hi], first.data[lo:hi]) {
						t.Fatalf("chunk %d is marked done without its data flushed", i)
					}
				} else if !powerCut && i%2 == 0 {
					clear(second[lo:hi])
				}
			}
			if done == 0 || done == cp.Chunks() {
				t.Fatalf("%d of %d chunks done: the crash missed the middle of the copy", done, cp.Chunks())
			}
			src := fromData(second)
			if _, err := Copy(context.Background(), src, dst, Options{Checkpoint: cp}); err != nil {
				t.Fatal(err)
			}
			if !equalBytes(dst.data, second) {
				t.Fatal("the resumed image differs from the source")
			}
		})
	}
}

func equalBytes(a, b []byte) bool { return bytes.Equal(a, b) }

// TestCompleteCheckpoint: a copy whose checkpoint is complete reads and
// writes nothing.
func TestCompleteCheckpoint(t *testing.T) {
	src := layout(16*mib, 14, span{mib, 5 * mib}, span{9 * mib, 10 * mib})
	cp, err := LoadCheckpoint(filepath.Join(t.TempDir(), "ckpt"), src.Size(), DefaultChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	dst := newMemSink(src.Size())
	if _, err := Copy(context.Background(), src, dst, Options{Checkpoint: cp}); err != nil {
		t.Fatal(err)
	}
	if !cp.Complete() {
		t.Fatal("checkpoint incomplete after the copy")
	}
	src.reads, dst.writes = nil, nil
	st, err := Copy(context.Background(), src, dst, Options{Checkpoint: cp})
	if err != nil {
		t.Fatal(err)
	}
	if read, _ := src.readBytes(nil); read != 0 || len(dst.writes) != 0 || st.SkippedBytes != 5*mib || st.DataBytes != 0 {
		t.Fatalf("second copy read %d bytes, wrote %d times, stats %+v", read, len(dst.writes), st)
	}
}

func TestSaveBytes(t *testing.T) {
	cp := &Checkpoint{}
	for _, tc := range []struct{ data, want int64 }{
		{0, MinSaveBytes},
		{32 * mib, MinSaveBytes},
		{1 << 30, 32 * mib},
		{1 << 40, MaxSaveBytes},
	} {
		if got := cp.saveBytes(tc.data); got != tc.want {
			t.Errorf("saveBytes(%d) = %d, want %d", tc.data, got, tc.want)
		}
	}
	cp.SaveBytes = 5
	if cp.saveBytes(1<<30) != 5 {
		t.Error("SaveBytes was not honoured")
	}
}

// stallingSink holds its first flush until release is closed, and counts
// the data written meanwhile.
type stallingSink struct {
	*memSink
	stalled  chan struct{} // closed when the first flush starts waiting
	release  chan struct{}
	mu       sync.Mutex
	flushing bool
	during   int64 // bytes written while the first flush waits
	once     sync.Once
}

func (s *stallingSink) WriteAt(ctx context.Context, p []byte, off int64) error {
	s.mu.Lock()
	if s.flushing {
		s.during += int64(len(p))
	}
	s.mu.Unlock()
	return s.memSink.WriteAt(ctx, p, off)
}

func (s *stallingSink) Flush(ctx context.Context) error {
	first := false
	s.once.Do(func() { first = true })
	if first {
		s.mu.Lock()
		s.flushing = true
		s.mu.Unlock()
		close(s.stalled)
		select {
		case <-s.release:
		case <-ctx.Done():
			return ctx.Err()
		}
		s.mu.Lock()
		s.flushing = false
		s.mu.Unlock()
	}
	return s.memSink.Flush(ctx)
}

// TestSlowSaveHoldsTheCopyBack shows that the unsaved work of a copy is
// bounded by bytes, not by time: while a checkpoint save cannot finish,
// the workers stop once 2×SaveBytes of finished data wait for it, plus
// what they had in flight, and go on when it settles.
func TestSlowSaveHoldsTheCopyBack(t *testing.T) {
	const size, chunk, inFlight, saveBytes = 64 * mib, 2 * mib, 4, 4 * mib
	src := layout(size, 21, span{0, size})
	cp, err := LoadCheckpoint(filepath.Join(t.TempDir(), "ckpt"), size, chunk)
	if err != nil {
		t.Fatal(err)
	}
	cp.SaveBytes, cp.SaveInterval = saveBytes, time.Hour
	sink := &stallingSink{memSink: newMemSink(size), stalled: make(chan struct{}), release: make(chan struct{})}
	done := make(chan error, 1)
	go func() {
		_, err := Copy(context.Background(), src, sink, Options{Checkpoint: cp, InFlight: inFlight, ChunkSize: int(chunk)})
		done <- err
	}()
	<-sink.stalled
	// The workers run until they block; wait for the written count to
	// stop moving.
	var last int64 = -1
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		sink.mu.Lock()
		n := sink.during
		sink.mu.Unlock()
		if n == last {
			break
		}
		last = n
	}
	select {
	case err := <-done:
		t.Fatalf("the copy finished (%v) while its first save was held", err)
	default:
	}
	if bound := int64(2*saveBytes + inFlight*chunk); last > bound {
		t.Errorf("wrote %d bytes while a save was held, want at most %d", last, bound)
	}
	close(sink.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !cp.Complete() {
		t.Error("checkpoint incomplete after the copy")
	}
}
