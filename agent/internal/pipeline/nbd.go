package pipeline

import (
	"context"
	"fmt"

	"github.com/ferry-v2v/ferry/pkg/nbd"
)

// NBDSource is a Source read from an NBD export: block status
// (base:allocation) gives the extents, and only extents the server says
// read as zeroes are skipped; an export without block status is all data.
type NBDSource struct {
	Client *nbd.Client
}

// Size returns the export's size.
func (s NBDSource) Size() int64 { return s.Client.Size() }

// Extents asks the server once; it may describe less than asked.
func (s NBDSource) Extents(ctx context.Context, off, length int64) ([]Extent, error) {
	if !s.Client.CanBlockStatus() {
		return []Extent{{Offset: off, Length: length}}, nil
	}
	exts, err := s.Client.BlockStatus(ctx, off, length)
	if err != nil {
		return nil, fmt.Errorf("block status at %d: %w", off, err)
	}
	out := make([]Extent, len(exts))
	for i, e := range exts {
		out[i] = Extent{Offset: e.Offset, Length: e.Length, Zero: e.Zero()}
	}
	return out, nil
}

// ReadAt fills p from off.
func (s NBDSource) ReadAt(ctx context.Context, p []byte, off int64) error {
	return s.Client.ReadAt(ctx, p, off)
}

// NBDSink is a Sink written to a writable NBD export. Writes must respect
// the export's minimum block size.
type NBDSink struct {
	Client *nbd.Client
}

// WriteAt writes p at off.
func (s NBDSink) WriteAt(ctx context.Context, p []byte, off int64) error {
	return s.Client.WriteAt(ctx, p, off, false)
}

// WriteZeroes zeroes length bytes at off, punching a hole when it can.
func (s NBDSink) WriteZeroes(ctx context.Context, off, length int64) error {
	return s.Client.WriteZeroes(ctx, off, length, 0)
}

// Flush makes every write that has returned durable.
func (s NBDSink) Flush(ctx context.Context) error { return s.Client.Flush(ctx) }
