package pipeline

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/pkg/ratelimit"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

const (
	kib = int64(1) << 10
	mib = int64(1) << 20
)

func dataBytes(s *memSource) int64 {
	var n int64
	for _, e := range s.extents {
		if !e.Zero {
			n += e.Length
		}
	}
	return n
}

// TestCopySparse copies disks of various shapes and checks the image
// matches, holes were never read, and every write covered whole granules.
func TestCopySparse(t *testing.T) {
	for _, tc := range []struct {
		name  string
		src   *memSource
		chunk int
	}{
		{"all holes", layout(8*mib, 1), 0},
		{"all data", layout(6*mib, 2, span{0, 6 * mib}), 0},
		{"data at both ends", layout(16*mib, 3, span{0, 100 * kib}, span{16*mib - 4*kib, 16 * mib}), 0},
		{"4 KiB extents across chunks", layout(8*mib, 4,
			span{4 * kib, 8 * kib}, span{2*mib - 4*kib, 2*mib + 4*kib}, span{3 * mib, 5*mib + 512}), 0},
		{"unaligned disk end", layout(5*mib+4608, 5, span{mib, 2 * mib}, span{5*mib + 512, 5*mib + 4608}), 0},
		{"small chunks", layout(8*mib, 6, span{100 * kib, 3 * mib}, span{7 * mib, 8 * mib}), MinChunkSize},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, inFlight := range []int{1, 8} {
				tc.src.reads = nil
				dst := newMemSink(tc.src.Size())
				st, err := Copy(context.Background(), tc.src, dst, Options{
					ChunkSize: tc.chunk, InFlight: inFlight, Logger: testkit.Logger(t),
				})
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(dst.data, tc.src.data) {
					t.Fatal("the image differs from the source")
				}
				want := dataBytes(tc.src)
				if read, _ := tc.src.readBytes(nil); read != want || st.DataBytes != want {
					t.Errorf("read %d, stats %d data bytes, want %d", read, st.DataBytes, want)
				}
				if st.ZeroBytes != tc.src.Size()-want || st.SkippedBytes != 0 {
					t.Errorf("stats %+v", st)
				}
				if dst.flushes == 0 {
					t.Error("the copy ended without a flush")
				}
			}
		})
	}
}

func TestProgress(t *testing.T) {
	src := layout(32*mib, 7, span{0, 10 * mib}, span{20 * mib, 30 * mib})
	src.delay = 100 * time.Millisecond
	var mu sync.Mutex
	var calls []int64
	start := time.Now()
	_, err := Copy(context.Background(), src, newMemSink(src.Size()), Options{
		InFlight: 2,
		Progress: func(done, total int64) {
			mu.Lock()
			defer mu.Unlock()
			if total != 20*mib {
				t.Errorf("total %d", total)
			}
			calls = append(calls, done)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	if len(calls) < 2 || calls[len(calls)-1] != 20*mib {
		t.Fatalf("progress calls %v", calls)
	}
	for i := 1; i < len(calls); i++ {
		if calls[i] < calls[i-1] {
			t.Fatalf("progress went back: %v", calls)
		}
	}
	if limit := int(elapsed/progressEvery) + 2; len(calls) > limit {
		t.Errorf("%d progress calls in %v", len(calls), elapsed)
	}
}

func TestCancelReturnsPromptly(t *testing.T) {
	src := layout(64*mib, 8, span{0, 64 * mib})
	src.delay = 50 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	src.onRead = func(total int64) {
		if total >= 8*mib {
			cancel()
		}
	}
	start := time.Now()
	_, err := Copy(ctx, src, newMemSink(src.Size()), Options{InFlight: 4})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Copy = %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("cancelled copy took %v", d)
	}
}

// TestLimiter copies 8 MiB at 32 Mbit/s (4 MiB/s): about 2 s, never less.
func TestLimiter(t *testing.T) {
	if testing.Short() {
		t.Skip("takes 2 s")
	}
	src := layout(16*mib, 9, span{0, 8 * mib})
	lim := ratelimit.New(32 << 20)
	start := time.Now()
	if _, err := Copy(context.Background(), src, newMemSink(src.Size()), Options{Limiter: lim}); err != nil {
		t.Fatal(err)
	}
	rate := float64(8*mib-int64(lim.Burst())) / time.Since(start).Seconds()
	// Never faster than the limit; slower only as much as a busy machine
	// delays the copy (the precise figure is make bench's).
	want := float64(4 * mib)
	t.Logf("measured %.0f B/s, limit %.0f", rate, want)
	if rate > want*1.1 {
		t.Errorf("measured %.0f B/s, above the limit %.0f", rate, want)
	}
	if rate < want/3 {
		t.Errorf("measured %.0f B/s, far below the limit %.0f", rate, want)
	}
}

func TestBadOptions(t *testing.T) {
	src := layout(4*mib, 10)
	cp, err := LoadCheckpoint(filepath.Join(t.TempDir(), "ckpt"), 8*mib, DefaultChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range []Options{
		{ChunkSize: 100 * 1024},
		{ChunkSize: 4 << 20},
		{ChunkSize: 300 << 10},
		{InFlight: -1},
		{Checkpoint: cp},
	} {
		if _, err := Copy(context.Background(), src, newMemSink(src.Size()), o); err == nil {
			t.Errorf("Copy accepted %+v", o)
		}
	}
}

type badSource struct{ *memSource }

func (badSource) Extents(ctx context.Context, off, length int64) ([]Extent, error) {
	return []Extent{{Offset: off + 512, Length: length}}, nil
}

func TestSourceBreaksContract(t *testing.T) {
	src := badSource{layout(4*mib, 11)}
	_, err := Copy(context.Background(), src, newMemSink(src.Size()), Options{})
	if !errors.Is(err, ErrSource) {
		t.Fatalf("Copy = %v, want ErrSource", err)
	}
}

func TestGranules(t *testing.T) {
	g := granules([]span{{4 * kib, 8 * kib}, {70 * kib, 80 * kib}, {200 * kib, 201 * kib}}, 0, 1000*kib)
	want := []span{{0, 128 * kib}, {192 * kib, 256 * kib}}
	if len(g) != len(want) || g[0] != want[0] || g[1] != want[1] {
		t.Fatalf("granules = %v, want %v", g, want)
	}
	if g := granules([]span{{100, 200}}, 0, 1000); g[0] != (span{0, 1000}) {
		t.Fatalf("granules at the disk end = %v", g)
	}
}
