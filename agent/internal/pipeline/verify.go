package pipeline

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/ferry-v2v/ferry/pkg/ratelimit"
)

// ErrMismatch is a target that does not hold what the source held.
var ErrMismatch = errors.New("differ from the source")

// MismatchError says which chunk of the target differs from the source.
type MismatchError struct {
	Offset, Length int64
	// Detail is what differs: a checksum, or a non-zero byte where the
	// source had zeroes.
	Detail string
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("the %d bytes at offset %d %v: %s", e.Length, e.Offset, ErrMismatch, e.Detail)
}

func (e *MismatchError) Unwrap() error { return ErrMismatch }

// VerifyStats describe a verification: bytes read back, and bytes the
// target said read as zeroes, checked by their status alone.
type VerifyStats struct {
	ReadBytes, ZeroBytes int64
}

// VerifyOptions tune Verify.
type VerifyOptions struct {
	// InFlight is how many chunks holding data are read at once; 0 means
	// DefaultInFlight.
	InFlight int
	// Progress gets the bytes checked and the bytes to check (the disk's
	// size, or the chunks' of VerifyChunks), at most
	// about four times a second and once at the end, from one goroutine.
	Progress func(done, total int64)
	// Limiter, when set, takes a token for every byte read back from the
	// target (the upstream limit: the target is across the same link the
	// upload used); ranges checked by their status take none.
	Limiter *ratelimit.Limiter
}

// Verify is VerifyWith, inFlight chunks at a time, without progress.
func Verify(ctx context.Context, target Source, cp *Checkpoint, inFlight int) (VerifyStats, error) {
	return VerifyWith(ctx, target, cp, VerifyOptions{InFlight: inFlight})
}

// VerifyWith compares the first cp.Size() bytes of target with the
// checksums of cp. It walks the target's block status a large window at
// a time: a chunk the target reports as zeroes throughout is checked by
// that status alone (it matches a chunk the source had as zeroes, or one
// whose checksum is that of zeroes), and only the data ranges of the
// others are read, with the zeroes between them known, not read. The
// first mismatch found is returned as a *MismatchError; a checkpoint that
// is not Verifiable is an error.
func VerifyWith(ctx context.Context, target Source, cp *Checkpoint, opts VerifyOptions) (VerifyStats, error) {
	if !cp.Verifiable() {
		return VerifyStats{}, fmt.Errorf("verify: %w: not every chunk was copied with a checksum", ErrCheckpoint)
	}
	if target.Size() < cp.Size() {
		return VerifyStats{}, fmt.Errorf("verify: the target holds %d bytes, the source %d", target.Size(), cp.Size())
	}
	if opts.InFlight <= 0 {
		opts.InFlight = DefaultInFlight
	}
	return verifyRuns(ctx, target, cp, [][2]int64{{0, cp.Size()}}, opts)
}

// chunkSums are the checksums a verification compares with.
type chunkSums interface {
	Size() int64
	ChunkSize() int64
	Sum(i int) (Sum, bool)
}

// VerifyChunks is VerifyWith for the chunks of sums listed in chunks
// (ascending) alone: what an upload checks of the chunks it has just
// written and flushed. Every chunk listed must have a checksum.
func VerifyChunks(ctx context.Context, target Source, sums *Sums, chunks []int, opts VerifyOptions) (VerifyStats, error) {
	var runs [][2]int64
	for _, i := range chunks {
		if _, ok := sums.Sum(i); !ok {
			return VerifyStats{}, fmt.Errorf("verify: %w: chunk %d has no checksum", ErrCheckpoint, i)
		}
		off, end := int64(i)*sums.chunk, min(sums.size, int64(i+1)*sums.chunk)
		if n := len(runs); n > 0 && runs[n-1][1] == off {
			runs[n-1][1] = end
			continue
		}
		runs = append(runs, [2]int64{off, end})
	}
	if target.Size() < sums.Size() {
		return VerifyStats{}, fmt.Errorf("verify: the target holds %d bytes, the source %d", target.Size(), sums.Size())
	}
	if opts.InFlight <= 0 {
		opts.InFlight = DefaultInFlight
	}
	return verifyRuns(ctx, target, sums, runs, opts)
}

// verifyRuns verifies the chunk-aligned byte ranges runs of target.
func verifyRuns(ctx context.Context, target Source, cp chunkSums, runs [][2]int64, opts VerifyOptions) (VerifyStats, error) {
	v := &verifier{target: target, cp: cp, runs: runs, opts: opts, zeroSums: map[int64]uint64{}}
	for _, r := range runs {
		v.total += r[1] - r[0]
	}
	g, gctx := errgroup.WithContext(ctx)
	jobs := make(chan job, opts.InFlight)
	g.Go(func() error {
		defer close(jobs)
		return v.produce(gctx, jobs)
	})
	for range opts.InFlight {
		g.Go(func() error {
			return drain(gctx, jobs, v.cp.ChunkSize(), func(ctx context.Context, j job, w *workerBuf) error {
				return v.checkData(ctx, j, w.b)
			})
		})
	}
	stop := make(chan struct{})
	var reporter errgroup.Group
	reporter.Go(func() error { v.reportLoop(stop); return nil })
	err := g.Wait()
	close(stop)
	_ = reporter.Wait()
	if err == nil {
		v.report()
	}
	read := v.read.Load()
	return VerifyStats{ReadBytes: read, ZeroBytes: v.total - read}, err
}

// verifier is one run of VerifyWith.
type verifier struct {
	target Source
	cp     chunkSums
	runs   [][2]int64 // the byte ranges to check, chunk-aligned, ascending
	total  int64      // their bytes
	opts   VerifyOptions

	read, checked atomic.Int64
	zeroMu        sync.Mutex
	zeroSums      map[int64]uint64 // xxHash64 of n zero bytes, by n
}

// produce walks the target's extents and checks each chunk of zeroes by
// its status; it sends the chunks holding data to the workers.
func (v *verifier) produce(ctx context.Context, jobs chan<- job) error {
	chunk, size := v.cp.ChunkSize(), v.cp.Size()
	cur := job{index: -1}
	flush := func() error {
		if cur.index < 0 {
			return nil
		}
		j := cur
		cur = job{index: -1}
		if j.dataBytes == 0 {
			return v.checkZero(j)
		}
		select {
		case jobs <- j:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	check := func(e Extent) error {
		for off, end := e.Offset, e.Offset+e.Length; off < end; {
			i := int(off / chunk)
			n := min(end, int64(i+1)*chunk) - off
			if i != cur.index {
				if err := flush(); err != nil {
					return err
				}
				cur = job{index: i, off: int64(i) * chunk, end: min(size, int64(i+1)*chunk)}
			}
			if !e.Zero {
				cur.addData(off, off+n)
			}
			off += n
		}
		return nil
	}
	for _, r := range v.runs {
		if err := walkRange(ctx, "verify", v.target, r[0], r[1], check); err != nil {
			return err
		}
	}
	return flush()
}

// checkZero checks a chunk the target reports as zeroes throughout.
func (v *verifier) checkZero(j job) error {
	want, _ := v.cp.Sum(j.index)
	if want.Kind == SumData {
		if got := v.zeroSum(j.end - j.off); got != want.Hash {
			return &MismatchError{Offset: j.off, Length: j.end - j.off,
				Detail: fmt.Sprintf("the target reads as zeroes (xxHash64 %016x), the source's xxHash64 is %016x", got, want.Hash)}
		}
	}
	v.checked.Add(j.end - j.off)
	return nil
}

// zeroSum is the xxHash64 of n zero bytes, computed once per length.
func (v *verifier) zeroSum(n int64) uint64 {
	v.zeroMu.Lock()
	defer v.zeroMu.Unlock()
	if h, ok := v.zeroSums[n]; ok {
		return h
	}
	buf, handle := getChunkBuf(n)
	clear(buf)
	h := dataSum(buf).Hash
	putChunkBuf(handle)
	v.zeroSums[n] = h
	return h
}

// checkData reads the data ranges of chunk j and compares the chunk, the
// zeroes between them included, with its checksum.
func (v *verifier) checkData(ctx context.Context, j job, buf []byte) error {
	want, _ := v.cp.Sum(j.index)
	if l := v.opts.Limiter; l != nil {
		if err := l.WaitN(ctx, int(j.dataBytes)); err != nil {
			return err
		}
	}
	b := buf[:j.end-j.off]
	pos := j.off
	for _, s := range j.data {
		clear(b[pos-j.off : s.off-j.off])
		if err := v.target.ReadAt(ctx, b[s.off-j.off:s.end-j.off], s.off); err != nil {
			return fmt.Errorf("verify: read %d bytes at %d: %w", s.end-s.off, s.off, err)
		}
		v.read.Add(s.end - s.off)
		pos = s.end
	}
	clear(b[pos-j.off:])
	switch want.Kind {
	case SumZero:
		for _, s := range j.data {
			if k := firstNonZero(b[s.off-j.off : s.end-j.off]); k >= 0 {
				return &MismatchError{Offset: j.off, Length: j.end - j.off,
					Detail: fmt.Sprintf("the source read as zeroes, the target has data at offset %d", s.off+int64(k))}
			}
		}
	default:
		if got := dataSum(b); got.Hash != want.Hash {
			return &MismatchError{Offset: j.off, Length: j.end - j.off,
				Detail: fmt.Sprintf("xxHash64 %016x, the source's %016x", got.Hash, want.Hash)}
		}
	}
	v.checked.Add(j.end - j.off)
	return nil
}

// reportLoop calls Progress every progressEvery until stop is closed.
func (v *verifier) reportLoop(stop <-chan struct{}) {
	if v.opts.Progress == nil {
		return
	}
	t := time.NewTicker(progressEvery)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			v.report()
		}
	}
}

func (v *verifier) report() {
	if v.opts.Progress != nil {
		v.opts.Progress(v.checked.Load(), v.total)
	}
}

func firstNonZero(b []byte) int {
	for i, v := range b {
		if v != 0 {
			return i
		}
	}
	return -1
}
