package target

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/ferry-v2v/ferry/agent/internal/pipeline"
	"github.com/ferry-v2v/ferry/pkg/nbd"
)

// The upload's requests: QEMU 7.2's NBD server (the cache's qemu-nbd
// and the volume's) allocates a buffer for each request of 2 MiB, which
// costs it several times the CPU of 256 KiB requests.
var (
	uploadRequest  = 256 << 10
	uploadInFlight = 16
)

// todoSource is the cache image as one upload round sees it: the chunks
// to upload hold what the image holds; every other chunk reads as zeroes
// and is never asked for. Failures to read the image wrap errCacheRead.
type todoSource struct {
	c           *nbd.Client
	size, chunk int64
	todo        []bool // by chunk
}

func (s todoSource) Size() int64 { return s.size }

// run returns the end of the run of chunks from off on that are all to
// upload, or all not, within end.
func (s todoSource) run(off, end int64) (int64, bool) {
	want := s.todo[off/s.chunk]
	pos := off
	for pos < end && s.todo[pos/s.chunk] == want {
		pos = min(end, (pos/s.chunk+1)*s.chunk)
	}
	return pos, want
}

func (s todoSource) Extents(ctx context.Context, off, length int64) ([]pipeline.Extent, error) {
	end, want := s.run(off, min(off+length, s.size))
	if !want {
		return []pipeline.Extent{{Offset: off, Length: end - off, Zero: true}}, nil
	}
	exts, err := pipeline.NBDSource{Client: s.c}.Extents(ctx, off, end-off)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errCacheRead, err)
	}
	out := exts[:0]
	for _, e := range exts {
		if e.Offset >= end {
			break
		}
		e.Length = min(e.Length, end-e.Offset)
		out = append(out, e)
	}
	return out, nil
}

func (s todoSource) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := s.c.ReadAt(ctx, p, off); err != nil {
		return fmt.Errorf("%w: %w", errCacheRead, err)
	}
	return nil
}

// round uploads the chunks todo of the cache image src onto the volume
// and flushes it: their data under the upstream limit, their zeroes as
// write-zeroes when the volume does not read as zeroes already.
func (f *follower) round(ctx context.Context, src *nbd.Client, m pipeline.Marks, todo []int) error {
	if err := f.openTarget(ctx); err != nil {
		return err
	}
	s := todoSource{c: src, size: m.Size, chunk: m.ChunkSize, todo: make([]bool, m.Chunks())}
	for _, i := range todo {
		s.todo[i] = true
	}
	if !f.zeroed {
		if err := zeroTodo(ctx, s, f.sink()); err != nil {
			return err
		}
	}
	base := f.uploaded
	report := func(done, _ int64) { f.job.Progress.Uploaded(f.disk, base+done) }
	st, err := pipeline.Copy(ctx, s, unflushed{f.sink()}, pipeline.Options{
		ChunkSize: uploadRequest, InFlight: uploadInFlight,
		Limiter: f.job.Upstream, Progress: report, Logger: slog.New(slog.DiscardHandler),
	})
	f.rounds++
	if err != nil {
		// The round's chunks are written again by a later one; they are
		// counted once, then.
		f.job.Progress.Uploaded(f.disk, base)
		return err
	}
	start := time.Now()
	if err := f.sink().Flush(ctx); err != nil {
		return fmt.Errorf("flush volume: %w", err)
	}
	f.uploaded = base + st.DataBytes
	f.job.Progress.Uploaded(f.disk, f.uploaded)
	f.log.DebugContext(ctx, "upload round", "chunks", len(todo), "bytes", st.DataBytes, "seconds", st.Duration.Seconds(),
		"flush_seconds", time.Since(start).Seconds())
	return nil
}

// unflushed is the volume as a round writes it: the round flushes it
// itself.
type unflushed struct{ pipeline.Sink }

func (unflushed) Flush(context.Context) error { return nil }

// zeroTodo writes zeroes where the chunks to upload read as zeroes.
func zeroTodo(ctx context.Context, s todoSource, dst pipeline.Sink) error {
	for off := int64(0); off < s.size; {
		exts, err := s.Extents(ctx, off, s.size-off)
		if err != nil {
			return err
		}
		for _, e := range exts {
			if e.Zero && s.todo[e.Offset/s.chunk] {
				if err := dst.WriteZeroes(ctx, e.Offset, e.Length); err != nil {
					return fmt.Errorf("zero %d bytes at %d: %w", e.Length, e.Offset, err)
				}
			}
			off = e.Offset + e.Length
		}
	}
	return nil
}
