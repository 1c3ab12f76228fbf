package pipeline

import (
	"context"
	"fmt"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
)

// copyChunk zeroes the chunk when an earlier run may have written it,
// reads its data spans after taking their tokens, writes them rounded out
// to whole granules, and records the chunk as complete with the checksum
// of its content (a chunk of zeroes is recorded as such, never read).
func (c *copier) copyChunk(ctx context.Context, j job, w *workerBuf) error {
	buf := w.b
	if j.zeroFirst {
		if err := c.dst.WriteZeroes(ctx, j.off, j.end-j.off); err != nil {
			return fmt.Errorf("copy: zero chunk at %d: %w", j.off, err)
		}
	}
	sum := Sum{Kind: SumZero}
	if j.dataBytes > 0 {
		if l := c.opts.Limiter; l != nil {
			if err := l.WaitN(ctx, int(j.dataBytes)); err != nil {
				return err
			}
		}
		b := buf[:j.end-j.off]
		if err := c.read(ctx, j, b); err != nil {
			return err
		}
		for _, r := range granules(j.data, j.off, j.end) {
			if err := c.dst.WriteAt(ctx, b[r.off-j.off:r.end-j.off], r.off); err != nil {
				return fmt.Errorf("copy: write %d bytes at %d: %w", r.end-r.off, r.off, err)
			}
		}
		c.copied.Add(j.dataBytes)
		if c.opts.Checkpoint != nil {
			sum = dataSum(b)
		}
	}
	cp := c.opts.Checkpoint
	if cp == nil {
		return nil
	}
	if feed := feedOf(c.feedPath); feed != nil {
		fc := &FedChunk{Index: j.index, Off: j.off, End: j.end}
		if j.dataBytes > 0 {
			fc.Data, fc.handle = buf[:j.end-j.off], w.handle
			for _, r := range granules(j.data, j.off, j.end) {
				fc.Spans = append(fc.Spans, Extent{Offset: r.off, Length: r.end - r.off})
				fc.DataBytes += r.end - r.off
			}
		}
		// A full feed waits for the upload to take chunks the checkpoint
		// marks done: a save now marks those this run completed.
		if feed.offer(ctx, fc, c.kickSave) && fc.handle != nil {
			w.giveAway()
		}
	}
	if cp.complete(j.index, j.dataBytes, sum) >= c.saveBytes {
		c.kickSave()
	}
	return cp.waitBelow(ctx, 2*c.saveBytes)
}

// read fills b, the chunk at j.off, with the data spans and zeroes between
// them.
func (c *copier) read(ctx context.Context, j job, b []byte) error {
	pos := j.off
	for _, s := range j.data {
		clear(b[pos-j.off : s.off-j.off])
		if err := c.src.ReadAt(ctx, b[s.off-j.off:s.end-j.off], s.off); err != nil {
			return fmt.Errorf("copy: read %d bytes at %d: %w", s.end-s.off, s.off, err)
		}
		pos = s.end
	}
	clear(b[pos-j.off:])
	return nil
}

// granules rounds data spans out to cache.Granule within [lo, hi) and merges
// those that meet.
func granules(data []span, lo, hi int64) []span {
	var out []span
	for _, s := range data {
		r := span{max(lo, s.off/cache.Granule*cache.Granule), min(hi, (s.end+cache.Granule-1)/cache.Granule*cache.Granule)}
		if n := len(out); n > 0 && out[n-1].end >= r.off {
			out[n-1].end = max(out[n-1].end, r.end)
			continue
		}
		out = append(out, r)
	}
	return out
}

// kickSave asks the saver for a checkpoint save now.
func (c *copier) kickSave() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}
