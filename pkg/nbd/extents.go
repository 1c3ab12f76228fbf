package nbd

import (
	"context"
	"fmt"
)

// Status flags of the base:allocation context.
const (
	// StateHole: the extent is not allocated; writing it may need space.
	StateHole = 1 << 0
	// StateZero: the extent reads as zeroes.
	StateZero = 1 << 1
	// StateDirty: in a qemu:dirty-bitmap context (Options.MetaContext),
	// the extent changed since the bitmap's checkpoint.
	StateDirty = 1 << 0
)

// Extent is a run of the export with one allocation status.
type Extent struct {
	Offset int64
	Length int64
	Flags  uint32 // StateHole | StateZero; other bits are dropped
}

// End is the offset just past the extent.
func (e Extent) End() int64 { return e.Offset + e.Length }

// Hole reports whether the extent is unallocated.
func (e Extent) Hole() bool { return e.Flags&StateHole != 0 }

// Dirty reports whether the extent changed, in a qemu:dirty-bitmap
// context.
func (e Extent) Dirty() bool { return e.Flags&StateDirty != 0 }

// Zero reports whether the extent reads as zeroes. An extent that is
// neither zero nor a hole holds data that must be copied.
func (e Extent) Zero() bool { return e.Flags&StateZero != 0 }

// BlockStatus asks the server once for the allocation status of
// [off, off+length). The extents it returns are contiguous from off, with
// neighbours of equal flags merged, and cover as much of the range as the
// server chose to describe in one reply: at least one byte, maybe all of
// it. Extents loops until the whole range is covered.
func (c *Client) BlockStatus(ctx context.Context, off, length int64) ([]Extent, error) {
	if !c.CanBlockStatus() {
		return nil, fmt.Errorf("%w: block status", ErrUnsupported)
	}
	if err := c.checkRange("block-status", off, length); err != nil {
		return nil, err
	}
	if length == 0 {
		return nil, nil
	}
	req := &request{cmd: cmdBlockStatus, off: uint64(off), length: uint32(min(length, int64(c.maxEffect())))}
	if err := c.do(ctx, req); err != nil {
		return nil, err
	}
	return appendExtents(nil, req.extents, off+length), nil
}

// Extents returns the allocation status of the whole of [off, off+length),
// asking the server as many times as it takes.
func (c *Client) Extents(ctx context.Context, off, length int64) ([]Extent, error) {
	var all []Extent
	end := off + length
	for pos := off; pos < end; {
		exts, err := c.BlockStatus(ctx, pos, end-pos)
		if err != nil {
			return nil, err
		}
		all = appendExtents(all, exts, end)
		pos = all[len(all)-1].End()
	}
	return all, nil
}

// appendExtents appends src to dst, dropping unknown flag bits, merging
// neighbours with equal flags and cutting everything at end. src must
// continue where dst ends and its first extent must start before end.
func appendExtents(dst, src []Extent, end int64) []Extent {
	for _, e := range src {
		if e.Offset >= end {
			break
		}
		e.Flags &= StateHole | StateZero
		e.Length = min(e.Length, end-e.Offset)
		if n := len(dst); n > 0 && dst[n-1].Flags == e.Flags && dst[n-1].End() == e.Offset {
			dst[n-1].Length += e.Length
			continue
		}
		dst = append(dst, e)
	}
	return dst
}
