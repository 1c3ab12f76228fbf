package target

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/ferry-v2v/ferry/agent/internal/pipeline"
	"github.com/ferry-v2v/ferry/pkg/nbd"
	"github.com/ferry-v2v/ferry/pkg/ratelimit"
)

// zeroWindow is how much block status the hole-zeroing walk asks at once.
const zeroWindow = 1 << 30

// NBDCopier copies with the pipeline over two NBD connections: the
// source's data extents only, many chunks in flight, every byte under the
// upstream Limiter. When the destination is not zeroed already, the
// source's zero extents and the destination's tail past the source's size
// are written as NBD write-zeroes, which carry no payload.
type NBDCopier struct {
	// Limiter may be nil: no limit.
	Limiter *ratelimit.Limiter
	// InFlight is the pipeline's chunks in flight (0: its default).
	InFlight int
	Log      *slog.Logger
}

// Copy implements Copier.
func (c *NBDCopier) Copy(ctx context.Context, src, dst Endpoint, opts CopyOptions) error {
	log := c.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	sc, err := src.dial(ctx, nbd.Options{Logger: log})
	if err != nil {
		return fmt.Errorf("connect to source %s: %w", src.URI(), err)
	}
	defer sc.Close()
	dc, err := dst.dial(ctx, nbd.Options{DisableBlockStatus: true, Logger: log})
	if err != nil {
		return fmt.Errorf("connect to volume %s: %w", dst.URI(), err)
	}
	defer dc.Close()
	if dc.Size() < sc.Size() {
		return fmt.Errorf("volume of %d bytes is smaller than the source's %d", dc.Size(), sc.Size())
	}
	_, err = pipeline.Copy(ctx, pipeline.NBDSource{Client: sc}, pipeline.NBDSink{Client: dc}, pipeline.Options{
		InFlight: c.InFlight, Limiter: c.Limiter, Progress: opts.Progress, Logger: log,
	})
	if err != nil {
		return err
	}
	if !opts.DstZeroed {
		if err := zeroHoles(ctx, sc, dc); err != nil {
			return err
		}
	}
	if err := dc.Flush(ctx); err != nil {
		return fmt.Errorf("flush volume: %w", err)
	}
	_ = sc.Disconnect(ctx)
	return dc.Disconnect(ctx)
}

// zeroHoles writes zeroes where the source reads as zeroes, and over the
// destination's bytes past the source's end.
func zeroHoles(ctx context.Context, sc, dc *nbd.Client) error {
	size := sc.Size()
	for off := int64(0); off < size; {
		exts, err := pipeline.NBDSource{Client: sc}.Extents(ctx, off, min(zeroWindow, size-off))
		if err != nil {
			return err
		}
		for _, e := range exts {
			if e.Zero {
				if err := dc.WriteZeroes(ctx, e.Offset, e.Length, 0); err != nil {
					return fmt.Errorf("zero %d bytes at %d: %w", e.Length, e.Offset, err)
				}
			}
			off = e.Offset + e.Length
		}
	}
	if tail := dc.Size() - size; tail > 0 {
		if err := dc.WriteZeroes(ctx, size, tail, 0); err != nil {
			return fmt.Errorf("zero the volume's tail: %w", err)
		}
	}
	return nil
}
