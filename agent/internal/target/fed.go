package target

import (
	"context"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/ferry-v2v/ferry/agent/internal/pipeline"
)

// The upload from the copy's buffers (pipeline.Feed): a chunk the copy
// offered and its checkpoint marks done goes to the volume from memory,
// so the upload beside the copy no longer reads the cache back. Chunks
// the feed does not hold are read from the cache as before.

// feedBytes bounds the chunk data a feed holds. The copy marks chunks
// done at most 2 × 64 MiB behind what it has written (a checkpoint save
// every 1/32 of the data, at most 64 MiB), and the upload takes them
// every followPoll; a feed that is full makes the copy keep its buffer.
var feedBytes int64 = 128 << 20

// onFedRound, when set by a test, is told of every round from the copy's
// buffers.
var onFedRound func(chunks int, bytes int64)

// feedWait is how long the copy may wait for room in a full feed when the
// upload writes the volume's file directly and without a limit: such an
// upload takes chunks as fast as the checkpoint marks them done.
var feedWait = time.Second

// fedInFlight is how many fed chunks are written to the volume at once.
const fedInFlight = 4

// roundFed writes the chunks of todo the feed holds to the volume and
// flushes it; it returns those (fed) and the others (rest).
func (f *follower) roundFed(ctx context.Context, todo []int) (fed, rest []int, err error) {
	if f.feed == nil {
		return nil, todo, nil
	}
	var chunks []*pipeline.FedChunk
	for _, i := range todo {
		if c := f.feed.Take(i); c != nil {
			chunks = append(chunks, c)
			fed = append(fed, i)
		} else {
			rest = append(rest, i)
		}
	}
	if len(chunks) == 0 {
		return nil, rest, nil
	}
	defer func() {
		for _, c := range chunks {
			c.Release()
		}
	}()
	if err := f.openTarget(ctx); err != nil {
		return nil, nil, err
	}
	base, dst := f.uploaded, f.sink()
	var mu sync.Mutex
	var done int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(fedInFlight)
	for _, c := range chunks {
		g.Go(func() error {
			if !f.zeroed {
				if err := dst.WriteZeroes(gctx, c.Off, c.End-c.Off); err != nil {
					return fmt.Errorf("zero %d bytes at %d: %w", c.End-c.Off, c.Off, err)
				}
			}
			if c.DataBytes == 0 {
				return nil
			}
			if l := f.job.Upstream; l != nil {
				if err := l.WaitN(gctx, int(c.DataBytes)); err != nil {
					return err
				}
			}
			for _, s := range c.Spans {
				if err := dst.WriteAt(gctx, c.Data[s.Offset-c.Off:s.Offset+s.Length-c.Off], s.Offset); err != nil {
					return fmt.Errorf("write %d bytes at %d: %w", s.Length, s.Offset, err)
				}
			}
			mu.Lock()
			done += c.DataBytes
			f.job.Progress.Uploaded(f.disk, base+done)
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		// The round's chunks are read from the cache by a later one.
		f.job.Progress.Uploaded(f.disk, base)
		return nil, nil, fmt.Errorf("upload from the copy's buffers: %w", err)
	}
	if err := dst.Flush(ctx); err != nil {
		return nil, nil, fmt.Errorf("flush volume: %w", err)
	}
	f.uploaded = base + done
	f.job.Progress.Uploaded(f.disk, f.uploaded)
	f.rounds++
	f.askWait()
	if onFedRound != nil {
		onFedRound(len(fed), done)
	}
	f.log.DebugContext(ctx, "upload round from the copy's buffers", "chunks", len(fed), "bytes", done)
	return fed, rest, nil
}

// askWait lets the copy wait for room in the feed while the upload writes
// the volume's file directly and without a limit.
func (f *follower) askWait() {
	if f.feed == nil || f.direct == nil {
		return
	}
	if l := f.job.Upstream; l != nil && l.Rate() > 0 {
		return
	}
	f.feed.SetWait(feedWait)
}
