package cache

import (
	"context"
	"fmt"

	"github.com/ferry-v2v/ferry/pkg/nbd"
)

// The I/O methods address the disk, [0, Size()). A compressed image is
// served rounded up to whole clusters: writes there must start on a
// cluster and end on one or at the disk's end, and the end of the disk is
// padded with zeroes to its cluster.

// ReadAt fills p from off. Reads need no alignment.
func (i *Image) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := i.check("read", off, int64(len(p))); err != nil {
		return err
	}
	align := int64(i.nbd.BlockSize().Min)
	lo, hi := off/align*align, min(i.served, (off+int64(len(p))+align-1)/align*align)
	if lo == off && hi == off+int64(len(p)) {
		return i.nbd.ReadAt(ctx, p, off)
	}
	buf := make([]byte, hi-lo)
	if err := i.nbd.ReadAt(ctx, buf, lo); err != nil {
		return err
	}
	copy(p, buf[off-lo:])
	return nil
}

// WriteAt writes p at off.
func (i *Image) WriteAt(ctx context.Context, p []byte, off int64) error {
	if err := i.check("write", off, int64(len(p))); err != nil {
		return err
	}
	if end := off + int64(len(p)); end == i.size && end != i.served {
		padded := make([]byte, i.served-off)
		copy(padded, p)
		p = padded
	}
	return i.nbd.WriteAt(ctx, p, off, false)
}

// WriteZeroes makes length bytes at off read as zeroes, releasing their
// space when it can.
func (i *Image) WriteZeroes(ctx context.Context, off, length int64) error {
	if err := i.check("write zeroes", off, length); err != nil {
		return err
	}
	if off+length == i.size {
		length = i.served - off
	}
	return i.nbd.WriteZeroes(ctx, off, length, 0)
}

// Flush makes every write that has returned durable.
func (i *Image) Flush(ctx context.Context) error {
	return i.nbd.Flush(ctx)
}

func (i *Image) check(op string, off, length int64) error {
	if off < 0 || length < 0 || off > i.size || length > i.size-off {
		return fmt.Errorf("cache: %s at %d+%d: %w of %d bytes", op, off, length, nbd.ErrOutOfRange, i.size)
	}
	return nil
}
