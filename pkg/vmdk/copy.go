package vmdk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/ferry-v2v/ferry/pkg/ratelimit"
)

// Sink is where a stream's data goes: a random-access image that reads as
// zeroes where nothing was written (the pipeline's cache image is one).
// WriteAt is called from several goroutines at once, for runs that never
// overlap.
type Sink interface {
	WriteAt(ctx context.Context, p []byte, off int64) error
	Flush(ctx context.Context) error
}

// DefaultAlign is the write granule when CopyOptions.Align is 0: 64 KiB,
// the cluster of a compressed qcow2 (Ferry's agent passes its cache's
// granule explicitly).
const DefaultAlign = 64 << 10

const (
	batchTarget   = 2 << 20 // disk bytes decoded and written as one unit
	maxBatchSpan  = 16 << 20
	progressEvery = 250 * time.Millisecond
)

// CopyOptions tune CopyStream. The zero value inflates on GOMAXPROCS
// goroutines (at most 8), writes whole 64 KiB granules, and has no limit
// and no progress.
type CopyOptions struct {
	// Workers is how many goroutines inflate grains while the stream is
	// read in order on another.
	Workers int
	// Align is the write granule, a power of two from 512: every write
	// covers whole granules (padded with zeroes), except at the disk's end.
	Align int64
	// Limiter, when set, takes a token for every byte read from the stream.
	Limiter *ratelimit.Limiter
	// Progress gets the disk offset below which everything is written and
	// the capacity, at most about four times a second and once at the
	// end. Calls never overlap.
	Progress func(done, total int64)
}

// CopyStats describe a copy: DataBytes written to the sink (granule
// padding included), StreamBytes read from the stream.
type CopyStats struct {
	DataBytes, StreamBytes int64
	Duration               time.Duration
}

// CopyStream decodes the rest of sr into dst: data granules are written,
// holes and zero grains never are, and dst is flushed at the end. Grains
// are inflated on several goroutines while the stream is read in order.
// When ctx ends CopyStream returns ctx.Err(); a read blocked on the stream
// returns only when the stream's owner closes it.
func CopyStream(ctx context.Context, sr *StreamReader, dst Sink, opts CopyOptions) (CopyStats, error) {
	start := time.Now()
	c, err := newStreamCopier(sr, dst, opts)
	if err != nil {
		return CopyStats{}, err
	}
	err = c.run(ctx)
	st := CopyStats{DataBytes: c.written.Load(), StreamBytes: sr.BytesRead(), Duration: time.Since(start)}
	if err == nil {
		c.prog.finish()
	}
	return st, err
}

// batch is a window of the disk [start, start+span): the raw grains read
// for it, the storage of their payloads, and the decoded window.
type batch struct {
	seq    int
	start  int64
	grains []rawGrain
	slab   []byte
	out    []byte
	state  []uint8 // of each grain of the window
}

type streamCopier struct {
	sr      *StreamReader
	dst     Sink
	opts    CopyOptions
	span    int64
	free    chan *batch
	work    chan *batch
	written atomic.Int64
	prog    frontier
}

func newStreamCopier(sr *StreamReader, dst Sink, opts CopyOptions) (*streamCopier, error) {
	if opts.Workers <= 0 {
		opts.Workers = min(runtime.GOMAXPROCS(0), 8)
	}
	if opts.Align == 0 {
		opts.Align = DefaultAlign
	}
	if opts.Align < SectorSize || opts.Align&(opts.Align-1) != 0 {
		return nil, fmt.Errorf("vmdk: copy: write granule %d is not a power of two from %d", opts.Align, SectorSize)
	}
	grain := sr.hdr.GrainBytes()
	unit := lcm(grain, opts.Align)
	if unit > maxBatchSpan {
		return nil, unsupportedf("grains of %d bytes written in granules of %d", grain, opts.Align)
	}
	c := &streamCopier{
		sr: sr, dst: dst, opts: opts, span: min(roundUp(batchTarget, unit), roundUp(sr.size, unit)),
		free: make(chan *batch, opts.Workers+2), work: make(chan *batch, opts.Workers),
		prog: frontier{fn: opts.Progress, total: sr.size, ends: map[int]int64{}},
	}
	for range cap(c.free) {
		c.free <- &batch{out: make([]byte, c.span)}
	}
	return c, nil
}

func (c *streamCopier) run(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return c.read(gctx) })
	for range c.opts.Workers {
		g.Go(func() error { return c.decodeLoop(gctx) })
	}
	if err := g.Wait(); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return err
	}
	if err := c.dst.Flush(ctx); err != nil {
		return fmt.Errorf("vmdk: copy: flush: %w", err)
	}
	return nil
}

// read reads grains in stream order and hands them out a window at a
// time. A grain is read straight into its batch's slab when it has room.
func (c *streamCopier) read(ctx context.Context) error {
	defer close(c.work)
	var cur *batch
	var stage []byte
	seq, maxStart, consumed := 0, int64(-1), c.sr.BytesRead()
	room := int(maxCompressed(c.sr.hdr.GrainBytes()))
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		buf, inSlab := stage[:0], cur != nil && cap(cur.slab)-len(cur.slab) >= room
		if inSlab {
			buf = cur.slab[len(cur.slab):]
		}
		g, err := c.sr.nextRaw(buf)
		if errors.Is(err, io.EOF) {
			return c.dispatch(ctx, cur)
		}
		if err != nil {
			return err
		}
		if err := c.limit(ctx, &consumed); err != nil {
			return err
		}
		if start := g.off / c.span * c.span; cur == nil || start != cur.start {
			if start < maxStart && c.sr.hdr.GrainBytes()%c.opts.Align != 0 {
				return unsupportedf("grains out of disk order (%d after %d) smaller than the write granule",
					g.off, maxStart)
			}
			stage = append(stage[:0], g.data...) // out of the batch about to go
			g.data = stage
			if err := c.dispatch(ctx, cur); err != nil {
				return err
			}
			if cur, err = c.newBatch(ctx, seq, start); err != nil {
				return err
			}
			seq, maxStart = seq+1, max(maxStart, start)
		} else if inSlab {
			cur.slab = cur.slab[:len(cur.slab)+len(g.data)] // read in place
			cur.grains = append(cur.grains, g)
			continue
		}
		cur.add(g, c.span)
	}
}

// add keeps a grain, its payload copied into the batch's slab, which
// grows to what the batches need.
func (b *batch) add(g rawGrain, span int64) {
	n := len(b.slab)
	if cap(b.slab)-n < len(g.data) {
		// Grains already added keep the old slab.
		b.slab = make([]byte, 0, max(2*cap(b.slab), int(span/2), len(g.data)))
		n = 0
	}
	b.slab = append(b.slab, g.data...)
	g.data = b.slab[n:]
	b.grains = append(b.grains, g)
}

func (c *streamCopier) limit(ctx context.Context, consumed *int64) error {
	n := c.sr.BytesRead() - *consumed
	*consumed += n
	if c.opts.Limiter == nil || n == 0 {
		return nil
	}
	return c.opts.Limiter.WaitN(ctx, int(n))
}

func (c *streamCopier) newBatch(ctx context.Context, seq int, start int64) (*batch, error) {
	select {
	case b := <-c.free:
		b.seq, b.start, b.grains, b.slab = seq, start, b.grains[:0], b.slab[:0]
		return b, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (c *streamCopier) dispatch(ctx context.Context, b *batch) error {
	if b == nil {
		return nil
	}
	select {
	case c.work <- b:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// decodeLoop inflates and writes batches until the reader is done.
func (c *streamCopier) decodeLoop(ctx context.Context) error {
	inf := &inflater{}
	tmp := make([]byte, c.sr.hdr.GrainBytes())
	for b := range c.work {
		if err := ctx.Err(); err != nil {
			return err
		}
		out, err := c.decodeBatch(inf, tmp, b)
		if err != nil {
			return err
		}
		if err := c.writeBatch(ctx, b, out); err != nil {
			return err
		}
		c.prog.done(b.seq, b.start+int64(len(out)))
		c.free <- b
	}
	return nil
}

// Grain states in a batch's window.
const (
	grainAbsent = iota // not in the stream: its bytes in out are stale
	grainZero          // decoded, all zeroes
	grainData
)

// decodeBatch lays a batch's grains out in its window and notes which hold
// data. Bytes of absent grains are left as they are; writeBatch clears
// those it writes.
func (c *streamCopier) decodeBatch(inf *inflater, tmp []byte, b *batch) ([]byte, error) {
	out := b.out[:min(c.span, c.sr.size-b.start)]
	grain := int64(len(tmp))
	n := int((int64(len(out)) + grain - 1) / grain)
	if cap(b.state) < n {
		b.state = make([]uint8, n)
	}
	b.state = b.state[:n]
	clear(b.state)
	for _, g := range b.grains {
		at := g.off - b.start
		data := g.data
		if g.compressed {
			dst := tmp
			if at+grain <= int64(len(out)) {
				dst = out[at : at+grain]
			}
			var err error
			if data, err = c.sr.decode(inf, g, dst); err != nil {
				return nil, err
			}
		}
		if &data[0] != &out[at] {
			copy(out[at:], data)
		}
		b.state[at/grain] = grainZero
		if !allZero(data) {
			b.state[at/grain] = grainData
		}
	}
	return out, nil
}

// writeBatch writes the granules of a window that hold data, absent
// grains in them as zeroes.
func (c *streamCopier) writeBatch(ctx context.Context, b *batch, out []byte) error {
	align, grain := c.opts.Align, c.sr.hdr.GrainBytes()
	run := int64(-1)
	for i := int64(0); run >= 0 || i < int64(len(out)); i += align {
		end := min(i+align, int64(len(out)))
		data := false
		for g := i / grain; i < end && g <= (end-1)/grain; g++ {
			data = data || b.state[g] == grainData
		}
		if data {
			for g := i / grain; g <= (end-1)/grain; g++ {
				if b.state[g] == grainAbsent {
					clear(out[max(i, g*grain):min(end, (g+1)*grain)])
				}
			}
		}
		if data && run < 0 {
			run = i
		}
		if !data && run >= 0 {
			p := out[run:min(i, int64(len(out)))]
			if err := c.dst.WriteAt(ctx, p, b.start+run); err != nil {
				return fmt.Errorf("vmdk: copy: write %d bytes at %d: %w", len(p), b.start+run, err)
			}
			c.written.Add(int64(len(p)))
			run = -1
		}
	}
	return nil
}

func lcm(a, b int64) int64 {
	x, y := a, b
	for y != 0 {
		x, y = y, x%y
	}
	return a / x * b
}

// frontier tracks the disk offset below which every batch is written,
// batches finishing out of order, and reports it.
type frontier struct {
	mu    sync.Mutex
	fn    func(done, total int64)
	total int64
	next  int
	ends  map[int]int64
	pos   int64
	last  time.Time
}

func (f *frontier) done(seq int, end int64) {
	if f.fn == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ends[seq] = end
	for e, ok := f.ends[f.next]; ok; e, ok = f.ends[f.next] {
		delete(f.ends, f.next)
		f.pos = max(f.pos, e)
		f.next++
	}
	if now := time.Now(); now.Sub(f.last) >= progressEvery {
		f.last = now
		f.fn(f.pos, f.total)
	}
}

func (f *frontier) finish() {
	if f.fn == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fn(f.total, f.total)
}
