package pipeline

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// TestSumsSurviveAResumedCopy: a copy cancelled half way and resumed from
// its checkpoint files leaves a checksum for every chunk, those of the
// first run read back from disk; Verify then passes on the copied image,
// reading only its data, and names the chunk of a flipped byte and the
// offset of a byte written where the source had zeroes.
func TestSumsSurviveAResumedCopy(t *testing.T) {
	data := layout(40*mib, 7, span{0, 9 * mib}, span{12 * mib, 20*mib + 4*kib}, span{33 * mib, 36 * mib})
	data.delay = time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	data.onRead = func(total int64) {
		if total >= 8*mib {
			cancel()
		}
	}
	path := filepath.Join(t.TempDir(), "vda.ckpt")
	dst := newMemSink(data.Size())
	cp, err := LoadCheckpoint(path, data.Size(), DefaultChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Copy(ctx, data, dst, Options{Checkpoint: cp, InFlight: 4, Logger: testkit.Logger(t)}); !errors.Is(err, context.Canceled) {
		t.Fatalf("first copy = %v, want context.Canceled", err)
	}
	if cp.Verifiable() {
		t.Fatal("a cancelled copy claims every chunk has a checksum")
	}
	cp, err = LoadCheckpoint(path, data.Size(), DefaultChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	firstRun := 0
	for i := range cp.Chunks() {
		if _, ok := cp.Sum(i); ok {
			firstRun++
		}
	}
	if firstRun == 0 || firstRun == cp.Chunks() {
		t.Fatalf("%d of %d chunks have checksums after the first run", firstRun, cp.Chunks())
	}
	if _, err := Copy(context.Background(), fromData(data.data), dst, Options{Checkpoint: cp, Logger: testkit.Logger(t)}); err != nil {
		t.Fatal(err)
	}

	cp, err = OpenCheckpoint(path)
	if err != nil {
		t.Fatal(err)
	}
	if !cp.Verifiable() {
		t.Fatal("a finished copy is not verifiable")
	}
	st, err := Verify(context.Background(), fromData(dst.data), cp, 4)
	if err != nil {
		t.Fatalf("verify the copy: %v", err)
	}
	if st.ReadBytes != dataBytes(data) {
		t.Errorf("verify read %d bytes, the disk holds %d of data", st.ReadBytes, dataBytes(data))
	}

	flipped := bytes.Clone(dst.data)
	flipped[13*mib+123] ^= 0x40
	_, err = Verify(context.Background(), fromData(flipped), cp, 4)
	var mm *MismatchError
	if !errors.As(err, &mm) || mm.Offset != 12*mib || mm.Length != DefaultChunkSize || !strings.Contains(err.Error(), "xxHash64") {
		t.Fatalf("verify with a flipped byte at %d = %v, want a mismatch of the chunk at %d", 13*mib+123, err, 12*mib)
	}

	stray := bytes.Clone(dst.data)
	stray[26*mib+5] = 1
	_, err = Verify(context.Background(), fromData(stray), cp, 4)
	if !errors.As(err, &mm) || mm.Offset != 26*mib || !strings.Contains(err.Error(), "has data at offset 27262981") {
		t.Fatalf("verify with a byte in a hole = %v, want the chunk at %d and offset 27262981", err, 26*mib)
	}
}

// TestSumsFile: a torn last record is dropped, sums of chunks not done
// are forgotten, a checkpoint gone takes its sums with it, and a
// checkpoint without sums (an older agent's) verifies nothing.
func TestSumsFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vda.ckpt")
	src := layout(8*mib, 3, span{0, 3 * mib})
	cp, err := LoadCheckpoint(path, src.Size(), DefaultChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Copy(context.Background(), src, newMemSink(src.Size()), Options{Checkpoint: cp}); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(cache.SumsPath(path), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	torn := appendSum(nil, 1, Sum{Kind: SumData, Hash: 42})
	if _, err := f.Write(torn[:sumRecord-3]); err != nil {
		t.Fatal(err)
	}
	f.Close()
	cp, err = LoadCheckpoint(path, src.Size(), DefaultChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	if s, _ := cp.Sum(1); s.Hash == 42 || !cp.Verifiable() {
		t.Fatalf("a torn record counted: chunk 1 has %+v, verifiable %v", s, cp.Verifiable())
	}
	if fi, err := os.Stat(cache.SumsPath(path)); err != nil || fi.Size() != int64(cp.Chunks()*sumRecord) {
		t.Fatalf("sums file not compacted to %d records: %v %v", cp.Chunks(), fi, err)
	}

	if err := os.Remove(cache.SumsPath(path)); err != nil {
		t.Fatal(err)
	}
	cp, err = OpenCheckpoint(path)
	if err != nil {
		t.Fatal(err)
	}
	if cp.Verifiable() {
		t.Fatal("a checkpoint without sums is verifiable")
	}
	if _, err := Verify(context.Background(), src, cp, 1); !errors.Is(err, ErrCheckpoint) {
		t.Fatalf("verify without sums = %v, want ErrCheckpoint", err)
	}

	if err := os.WriteFile(cache.SumsPath(path), torn, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCheckpoint(path, src.Size(), DefaultChunkSize); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(cache.SumsPath(path)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the sums of a removed checkpoint are still there: %v", err)
	}
}

// BenchmarkDataSum is the checksum's cost per chunk, against the copy's
// hundreds of MB/s.
func BenchmarkDataSum(b *testing.B) {
	buf := bytes.Repeat([]byte("ferry-checksum!"), DefaultChunkSize/15+1)[:DefaultChunkSize]
	b.SetBytes(DefaultChunkSize)
	for b.Loop() {
		dataSum(buf)
	}
}

// extentCounter counts a Source's block status calls.
type extentCounter struct {
	Source
	calls atomic.Int64
}

func (s *extentCounter) Extents(ctx context.Context, off, length int64) ([]Extent, error) {
	s.calls.Add(1)
	return s.Source.Extents(ctx, off, length)
}

// TestVerifyWalksDataOnly: verifying a 256 MiB disk holding 4.1 MiB asks
// block status a window at a time (twice here: the fake answers three
// extents a call), never per chunk, reads the data only (the fake fails
// a read that touches a zero extent), and reports every byte checked. A
// target that reports as zeroes a chunk the source had data in fails,
// named, without being read.
func TestVerifyWalksDataOnly(t *testing.T) {
	data := []span{{3 * mib, 3*mib + 100*kib}, {200 * mib, 204 * mib}}
	src := layout(256*mib, 5, data...)
	path := filepath.Join(t.TempDir(), "vda.ckpt")
	cp, err := LoadCheckpoint(path, src.Size(), DefaultChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Copy(context.Background(), src, newMemSink(src.Size()), Options{Checkpoint: cp}); err != nil {
		t.Fatal(err)
	}
	if cp, err = OpenCheckpoint(path); err != nil {
		t.Fatal(err)
	}

	target := &extentCounter{Source: src}
	var done, total int64
	st, err := VerifyWith(context.Background(), target, cp, VerifyOptions{InFlight: 4, Progress: func(d, tot int64) { done, total = d, tot }})
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if want := dataBytes(src); st.ReadBytes != want || st.ZeroBytes != src.Size()-want {
		t.Errorf("verify read %d bytes and took %d as zeroes, want %d and %d", st.ReadBytes, st.ZeroBytes, want, src.Size()-want)
	}
	if n := target.calls.Load(); n > 2 {
		t.Errorf("verify asked block status %d times, want 2 (a window at a time)", n)
	}
	if done != src.Size() || total != src.Size() {
		t.Errorf("progress ended at %d of %d, want %d of %d", done, total, src.Size(), src.Size())
	}

	holed := layout(256*mib, 5, data[0])
	_, err = VerifyWith(context.Background(), holed, cp, VerifyOptions{InFlight: 4})
	var mm *MismatchError
	if !errors.As(err, &mm) || mm.Offset != 200*mib || !strings.Contains(err.Error(), "the target reads as zeroes") {
		t.Fatalf("verify a target without the data at 200 MiB = %v, want a mismatch of the chunk at %d", err, 200*mib)
	}
}
