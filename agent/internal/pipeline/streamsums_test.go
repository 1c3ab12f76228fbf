package pipeline

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/ferry-v2v/ferry/agent/internal/cache"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// streamDisk is a disk of 10 chunks and a short one, with data in some
// chunks, none in others, and a chunk holding data only in part.
func streamDisk() *memSource {
	return layout(20*mib+64*kib, 11,
		span{0, 3 * mib}, span{5*mib + 128*kib, 5*mib + 192*kib}, span{8 * mib, 11 * mib},
		span{16*mib - 64*kib, 16 * mib}, span{20 * mib, 20*mib + 64*kib})
}

// copySums are the sums Copy records for src: what a stream copy must
// record too.
func copySums(t *testing.T, src *memSource) *Checkpoint {
	t.Helper()
	cp, err := LoadCheckpoint(filepath.Join(t.TempDir(), "ref.ckpt"), src.Size(), DefaultChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Copy(context.Background(), src, newMemSink(src.Size()), Options{Checkpoint: cp, Logger: testkit.Logger(t)}); err != nil {
		t.Fatal(err)
	}
	return cp
}

// writeGranules writes the granules of [off, end) of src that hold data
// into img and s, as a stream decoder does.
func writeGranules(t *testing.T, s *StreamSums, src *memSource, img []byte, off, end int64) {
	t.Helper()
	for g := off; g < end; g += cache.Granule {
		p := src.data[g:min(g+cache.Granule, end)]
		if isZero(p) {
			continue
		}
		copy(img[g:], p)
		if err := s.Write(p, g); err != nil {
			t.Fatal(err)
		}
	}
}

func sameSums(t *testing.T, got, want *Checkpoint) {
	t.Helper()
	for i := range want.Chunks() {
		w, _ := want.Sum(i)
		g, ok := got.Sum(i)
		if !ok || g != w {
			t.Errorf("chunk %d: sum %+v (recorded %v), Copy records %+v", i, g, ok, w)
		}
	}
}

// TestStreamSumsRecordWhatCopyRecords: a stream written in windows by
// several goroutines and sealed behind them, and a stream out of disk
// order with little memory, record the very sums Copy records for the same
// disk, durably; Verify then passes on the image and names a flipped byte.
func TestStreamSumsRecordWhatCopyRecords(t *testing.T) {
	src := streamDisk()
	want := copySums(t, src)

	t.Run("in order", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "d.ckpt")
		cp, err := LoadCheckpoint(path, src.Size(), DefaultChunkSize)
		if err != nil {
			t.Fatal(err)
		}
		s, err := NewStreamSums(cp, 0)
		if err != nil {
			t.Fatal(err)
		}
		img := make([]byte, src.Size())
		const window = 4 * mib // four windows in flight, then sealed below them
		for w := int64(0); w < src.Size(); w += 4 * window {
			var wg sync.WaitGroup
			for k := range int64(4) {
				wg.Go(func() {
					lo := min(src.Size(), w+k*window)
					writeGranules(t, s, src, img, lo, min(src.Size(), lo+window))
				})
			}
			wg.Wait()
			s.Seal(w + 4*window)
		}
		late, err := s.Finish(context.Background(), fromData(img))
		if err != nil || late != 0 {
			t.Fatalf("finish = %d chunks read back, %v; want 0, nil", late, err)
		}
		reopened, err := OpenCheckpoint(path)
		if err != nil {
			t.Fatal(err)
		}
		sameSums(t, reopened, want)
		if _, err := Verify(context.Background(), fromData(img), reopened, 4); err != nil {
			t.Fatalf("verify the image: %v", err)
		}
		flipped := bytes.Clone(img)
		flipped[9*mib+7] ^= 1
		_, err = Verify(context.Background(), fromData(flipped), reopened, 4)
		var mm *MismatchError
		if !errors.As(err, &mm) || mm.Offset != 8*mib || !strings.Contains(err.Error(), "xxHash64") {
			t.Fatalf("verify with a flipped byte at %d = %v, want a mismatch of the chunk at %d", 9*mib+7, err, 8*mib)
		}
	})

	t.Run("out of order", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "d.ckpt")
		cp, err := LoadCheckpoint(path, src.Size(), DefaultChunkSize)
		if err != nil {
			t.Fatal(err)
		}
		s, err := NewStreamSums(cp, 2)
		if err != nil {
			t.Fatal(err)
		}
		img := make([]byte, src.Size())
		// Two chunks open at most: chunk 4, then 0; chunk 1 seals 0, the
		// lowest open one, before the rest of 0 comes.
		writeGranules(t, s, src, img, 8*mib, 9*mib)
		writeGranules(t, s, src, img, 0, 1*mib)
		writeGranules(t, s, src, img, 2*mib, 3*mib)
		writeGranules(t, s, src, img, 1*mib, 2*mib) // chunk 0 again: late
		writeGranules(t, s, src, img, 3*mib, 8*mib)
		s.Seal(10 * mib)
		writeGranules(t, s, src, img, 9*mib, 11*mib) // chunk 4 again, late, and 5
		writeGranules(t, s, src, img, 11*mib, src.Size())
		late, err := s.Finish(context.Background(), fromData(img))
		if err != nil || late != 2 {
			t.Fatalf("finish = %d chunks read back, %v; want 2 (chunks 0 and 4), nil", late, err)
		}
		reopened, err := OpenCheckpoint(path)
		if err != nil {
			t.Fatal(err)
		}
		sameSums(t, reopened, want)
		if _, err := Verify(context.Background(), fromData(img), reopened, 4); err != nil {
			t.Fatalf("verify the image: %v", err)
		}
	})
}

func TestStreamSumsRefuse(t *testing.T) {
	src := streamDisk()
	if _, err := NewStreamSums(copySums(t, src), 0); !errors.Is(err, ErrCheckpoint) {
		t.Errorf("stream sums over a finished checkpoint = %v, want ErrCheckpoint", err)
	}
	cp, err := LoadCheckpoint(filepath.Join(t.TempDir(), "d.ckpt"), 4*mib, DefaultChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewStreamSums(cp, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Write(make([]byte, cache.Granule), 4*mib-cache.Granule/2); err == nil || !strings.Contains(err.Error(), "past the disk") {
		t.Errorf("a write past the end = %v, want an error saying so", err)
	}
}

// BenchmarkStreamSums: what recording checksums adds to a stream copy,
// 64 MiB of data written in 64 KiB granules by 4 goroutines, windows of
// 2 MiB, sealed behind them.
func BenchmarkStreamSums(b *testing.B) {
	const size, window = 64 * mib, 2 * mib
	src := layout(size, 3, span{0, size})
	b.SetBytes(size)
	for b.Loop() {
		cp, err := LoadCheckpoint(filepath.Join(b.TempDir(), "d.ckpt"), size, DefaultChunkSize)
		if err != nil {
			b.Fatal(err)
		}
		s, err := NewStreamSums(cp, 0)
		if err != nil {
			b.Fatal(err)
		}
		for w := int64(0); w < size; w += 4 * window {
			var wg sync.WaitGroup
			for k := range int64(4) {
				wg.Go(func() {
					for g := w + k*window; g < w+(k+1)*window; g += cache.Granule {
						_ = s.Write(src.data[g:g+cache.Granule], g)
					}
				})
			}
			wg.Wait()
			s.Seal(w + 4*window)
		}
		if late, err := s.Finish(context.Background(), src); err != nil || late != 0 {
			b.Fatal(late, err)
		}
	}
}
