// Package pipeline is the CONVERTING copy: a disk's data extents from a
// source into its cache image, many chunks in flight, holes never read
// nor sent, the downstream bandwidth limit applied to every byte read, and
// a checkpoint that lets a restarted job skip what its cache already
// holds.
package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/ferry-v2v/ferry/pkg/ratelimit"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
)

// Chunk sizes and defaults.
const (
	DefaultChunkSize = 2 << 20
	MinChunkSize     = 256 << 10
	MaxChunkSize     = 2 << 20
	DefaultInFlight  = 16
)

// Writes are rounded out to cache.Granule, the cluster of a qcow2 cache,
// whose compressed clusters must be written whole: data extents are
// padded with zeroes to it; only the disk's end may cut a granule.

const (
	extentWindow  = 1 << 30   // bytes of block status asked at once
	reserveAhead  = 256 << 20 // how far the write frontier is saved ahead
	progressEvery = 250 * time.Millisecond
	finalSaveTime = 30 * time.Second // to save a cancelled copy's work
)

// ErrSource reports a source that breaks its contract.
var ErrSource = errors.New("source")

// Extent is a run of a disk that holds data or reads as zeroes.
type Extent struct {
	Offset, Length int64
	Zero           bool
}

// Source is a disk to copy. Extents describes [off, off+length) from off
// onwards, contiguously; it may describe less than asked, but not
// nothing. ReadAt fills p from off.
type Source interface {
	Size() int64
	Extents(ctx context.Context, off, length int64) ([]Extent, error)
	ReadAt(ctx context.Context, p []byte, off int64) error
}

// Sink is the cache image. Flush makes every write that has returned
// durable.
type Sink interface {
	WriteAt(ctx context.Context, p []byte, off int64) error
	WriteZeroes(ctx context.Context, off, length int64) error
	Flush(ctx context.Context) error
}

// Options tune a copy. The zero value copies 2 MiB chunks, 16 in flight,
// with no limit, no checkpoint and no progress.
type Options struct {
	// ChunkSize is the unit of checkpoint marks and checksums, and of the
	// reads and writes the copy asks for: a multiple of cache.Granule from
	// MinChunkSize to MaxChunkSize. It defaults to the Checkpoint's chunk
	// size, or DefaultChunkSize. It is not the size of NBD requests: an
	// nbd.Client sends a chunk as requests of its MaxRequest (256 KiB by
	// default, which QEMU's NBD server serves without allocating), all in
	// flight at once; the cache's client writes a chunk as one request
	// (cache's writeRequest).
	ChunkSize int
	// InFlight is how many chunks are read and written at once; the
	// requests in flight on the source's connection are bounded by its
	// nbd.Options.MaxInFlight.
	InFlight int
	// Limiter, when set, takes a token for every byte read from the source.
	Limiter *ratelimit.Limiter
	// Checkpoint, when set, skips chunks already done and records new ones.
	Checkpoint *Checkpoint
	// Progress gets the data bytes done and to do, at most about four
	// times a second and once at the end, from one goroutine. Data already
	// in the cache counts as done from the start.
	Progress func(done, total int64)
	Logger   *slog.Logger
}

// Stats describe a copy. DataBytes were read and written by this run,
// SkippedBytes are data the checkpoint said the cache already held, and
// ZeroBytes are holes and zeroes, never read.
type Stats struct {
	DataBytes, ZeroBytes, SkippedBytes int64
	Duration                           time.Duration
}

// copier is one run of Copy.
type copier struct {
	src   Source
	dst   Sink
	opts  Options
	size  int64
	chunk int64
	log   *slog.Logger

	total     int64        // data bytes on the disk
	skipped   int64        // of which already done
	saveBytes int64        // data written that triggers a checkpoint save
	copied    atomic.Int64 // data bytes written by this run
	kick      chan struct{}
	feedPath  string // the checkpoint's path, by which an upload subscribes
}

// Copy copies src's data into dst. With a checkpoint, dst must be the
// image the checkpoint describes. When ctx ends, Copy saves what is
// already durable and returns ctx.Err().
func Copy(ctx context.Context, src Source, dst Sink, opts Options) (Stats, error) {
	start := time.Now()
	c, err := newCopier(src, dst, opts)
	if err != nil {
		return Stats{}, err
	}
	err = c.run(ctx)
	st := Stats{
		DataBytes:    c.copied.Load(),
		ZeroBytes:    c.size - c.total,
		SkippedBytes: c.skipped,
		Duration:     time.Since(start),
	}
	if ctx.Err() != nil {
		err = ctx.Err()
	}
	if err != nil {
		c.log.Info("copy stopped", "err", err, "data", st.DataBytes, "skipped", st.SkippedBytes)
		return st, err
	}
	c.log.Info("copy done", "data", st.DataBytes, "zero", st.ZeroBytes,
		"skipped", st.SkippedBytes, "duration", st.Duration)
	return st, nil
}

func newCopier(src Source, dst Sink, opts Options) (*copier, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	cp := opts.Checkpoint
	if opts.ChunkSize == 0 {
		opts.ChunkSize = DefaultChunkSize
		if cp != nil {
			opts.ChunkSize = int(cp.ChunkSize())
		}
	}
	if opts.ChunkSize < MinChunkSize || opts.ChunkSize > MaxChunkSize || opts.ChunkSize%cache.Granule != 0 {
		return nil, fmt.Errorf("copy: chunk size %d is not a multiple of %d from %d to %d",
			opts.ChunkSize, cache.Granule, MinChunkSize, MaxChunkSize)
	}
	if opts.InFlight == 0 {
		opts.InFlight = DefaultInFlight
	}
	if opts.InFlight < 0 {
		return nil, fmt.Errorf("copy: %d chunks in flight", opts.InFlight)
	}
	size := src.Size()
	if size < 0 {
		return nil, fmt.Errorf("copy: %w size %d", ErrSource, size)
	}
	if cp != nil && (cp.Size() != size || cp.ChunkSize() != int64(opts.ChunkSize)) {
		return nil, fmt.Errorf("copy: %w of %d bytes in chunks of %d for a disk of %d in chunks of %d",
			ErrCheckpoint, cp.Size(), cp.ChunkSize(), size, opts.ChunkSize)
	}
	return &copier{
		src: src, dst: dst, opts: opts, size: size, chunk: int64(opts.ChunkSize),
		log: opts.Logger, kick: make(chan struct{}, 1),
	}, nil
}

// run counts the data, then copies it with a producer of chunk jobs, the
// workers, the checkpoint saver and the progress reporter, and finally
// makes the work durable.
func (c *copier) run(ctx context.Context) error {
	if cp := c.opts.Checkpoint; cp != nil {
		cp.begin()
		c.feedPath = cp.Path()
		if f := feedOf(c.feedPath); f != nil {
			f.reset()
		}
	}
	if err := c.count(ctx); err != nil {
		return err
	}
	if cp := c.opts.Checkpoint; cp != nil {
		c.saveBytes = cp.saveBytes(c.total - c.skipped)
	}
	c.log.Info("copy", "size", c.size, "data", c.total, "done", c.skipped,
		"chunk", c.chunk, "in_flight", c.opts.InFlight)
	g, gctx := errgroup.WithContext(ctx)
	workersDone := make(chan struct{})
	g.Go(func() error {
		defer close(workersDone)
		return c.copyChunks(gctx)
	})
	g.Go(func() error { return c.saveLoop(gctx, workersDone) })
	g.Go(func() error { c.reportLoop(gctx, workersDone); return nil })
	err := g.Wait()
	if serr := c.finalSave(ctx, err); err == nil {
		err = serr
	}
	c.report()
	return err
}

// copyChunks runs the producer and the workers.
func (c *copier) copyChunks(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	jobs := make(chan job, c.opts.InFlight)
	g.Go(func() error {
		defer close(jobs)
		return c.produce(gctx, jobs)
	})
	for range c.opts.InFlight {
		g.Go(func() error { return drain(gctx, jobs, c.chunk, c.copyChunk) })
	}
	return g.Wait()
}

// finalSave flushes and records the chunks completed since the last save:
// all of them after success, and after a failure whatever the sink can
// still flush, with a context of its own when ctx has ended.
func (c *copier) finalSave(ctx context.Context, runErr error) error {
	if c.opts.Checkpoint == nil {
		if runErr != nil {
			return nil
		}
		if err := c.dst.Flush(ctx); err != nil {
			return fmt.Errorf("copy: flush: %w", err)
		}
		return nil
	}
	if runErr != nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), finalSaveTime)
		defer cancel()
	}
	err := c.save(ctx)
	if err != nil && runErr != nil {
		c.log.Warn("saving the checkpoint of a stopped copy", "err", err)
	}
	return err
}
