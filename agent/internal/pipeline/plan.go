package pipeline

import (
	"context"
	"fmt"
)

// span is a run of bytes of the disk, [off, end).
type span struct{ off, end int64 }

// job is one chunk to copy: its data spans, in order and merged, and
// whether it must be zeroed first because an earlier run may have written
// it.
type job struct {
	index     int
	off, end  int64
	data      []span
	dataBytes int64
	zeroFirst bool
}

// walk calls fn with the extents of [0, size) in order, asking the source
// a window at a time and checking that it describes the disk contiguously.
// Its errors begin with what, the operation walking.
func walk(ctx context.Context, what string, src Source, size int64, fn func(Extent) error) error {
	return walkRange(ctx, what, src, 0, size, fn)
}

// walkRange is walk over [from, size) alone.
func walkRange(ctx context.Context, what string, src Source, from, size int64, fn func(Extent) error) error {
	for pos := from; pos < size; {
		want := min(size-pos, extentWindow)
		exts, err := src.Extents(ctx, pos, want)
		if err != nil {
			return fmt.Errorf("%s: extents at %d: %w", what, pos, err)
		}
		if len(exts) == 0 {
			return fmt.Errorf("%s: %w described nothing at %d", what, ErrSource, pos)
		}
		for _, e := range exts {
			if e.Offset != pos || e.Length <= 0 {
				return fmt.Errorf("%s: %w extent %d+%d where %d was expected", what, ErrSource, e.Offset, e.Length, pos)
			}
			e.Length = min(e.Length, size-pos)
			if err := fn(e); err != nil {
				return err
			}
			if pos += e.Length; pos == size {
				break
			}
		}
	}
	return nil
}

// eachChunk cuts e at chunk boundaries and calls fn with each piece and
// the index of its chunk.
func (c *copier) eachChunk(e Extent, fn func(i int, e Extent) error) error {
	for off, end := e.Offset, e.Offset+e.Length; off < end; {
		i := int(off / c.chunk)
		n := min(end, int64(i+1)*c.chunk) - off
		if err := fn(i, Extent{Offset: off, Length: n, Zero: e.Zero}); err != nil {
			return err
		}
		off += n
	}
	return nil
}

// count sums the data of the disk and the part of it already done.
func (c *copier) count(ctx context.Context) error {
	cp := c.opts.Checkpoint
	return walk(ctx, "copy", c.src, c.size, func(e Extent) error {
		if e.Zero {
			return nil
		}
		c.total += e.Length
		if cp == nil {
			return nil
		}
		return c.eachChunk(e, func(i int, e Extent) error {
			if cp.Done(i) {
				c.skipped += e.Length
			}
			return nil
		})
	})
}

// produce walks the disk again and sends a job for every chunk that needs
// a write, in order. Chunks done earlier are skipped; chunks of zeroes
// nobody wrote are done already, as the image was created zeroed.
func (c *copier) produce(ctx context.Context, jobs chan<- job) error {
	cur := job{index: -1}
	flush := func() error {
		if cur.index < 0 {
			return nil
		}
		return c.emit(ctx, jobs, cur)
	}
	err := walk(ctx, "copy", c.src, c.size, func(e Extent) error {
		return c.eachChunk(e, func(i int, e Extent) error {
			if i != cur.index {
				if err := flush(); err != nil {
					return err
				}
				cur = job{index: i, off: int64(i) * c.chunk, end: min(c.size, int64(i+1)*c.chunk)}
			}
			if !e.Zero {
				cur.addData(e.Offset, e.Offset+e.Length)
			}
			return nil
		})
	})
	if err != nil {
		return err
	}
	return flush()
}

func (j *job) addData(off, end int64) {
	j.dataBytes += end - off
	if n := len(j.data); n > 0 && j.data[n-1].end == off {
		j.data[n-1].end = end
		return
	}
	j.data = append(j.data, span{off, end})
}

// emit decides what chunk j needs and hands it to the workers.
func (c *copier) emit(ctx context.Context, jobs chan<- job, j job) error {
	if cp := c.opts.Checkpoint; cp != nil {
		if cp.Done(j.index) {
			return nil
		}
		j.zeroFirst = cp.mayBeWritten(j.index)
		if j.dataBytes == 0 && !j.zeroFirst {
			if f := feedOf(c.feedPath); f != nil {
				f.offer(ctx, &FedChunk{Index: j.index, Off: j.off, End: j.end}, nil)
			}
			cp.complete(j.index, 0, Sum{Kind: SumZero})
			return nil
		}
		// The frontier is durable before any write behind it starts.
		if err := cp.reserve(j.end, reserveAhead); err != nil {
			return err
		}
	} else if j.dataBytes == 0 {
		return nil
	}
	select {
	case jobs <- j:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
