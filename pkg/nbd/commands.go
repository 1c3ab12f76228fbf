package nbd

import (
	"context"
	"fmt"
)

// ZeroFlags modify WriteZeroes.
type ZeroFlags uint16

const (
	// ZeroNoHole asks the server to allocate the zeroed range rather than
	// punch a hole.
	ZeroNoHole ZeroFlags = 1 << iota
	// ZeroFast asks the server to fail with ENOTSUP (errors.Is
	// ErrUnsupported) unless zeroing is faster than writing zeroes.
	ZeroFast
	// ZeroFUA asks the server to persist the zeroes before replying.
	ZeroFUA
)

// ReadAt fills p with the export's bytes at off. Holes the server reports
// read as zeroes. Reads larger than the server's maximum are split into
// requests sent together. On an error p's contents are unspecified; on
// ctx's end ReadAt returns as soon as the reader is not writing into p,
// and the late reply is discarded.
func (c *Client) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := c.checkRange("read", off, int64(len(p))); err != nil {
		return err
	}
	return c.split(ctx, cmdRead, 0, p, off, int64(len(p)), c.maxRead)
}

// WriteAt writes p at off; with fua the server persists it before
// replying. Writes larger than the server's maximum are split.
func (c *Client) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	var flags uint16
	if fua {
		if !c.Flags().CanFUA() {
			return fmt.Errorf("%w: FUA", ErrUnsupported)
		}
		flags |= cmdFlagFUA
	}
	if err := c.checkWrite("write", off, int64(len(p))); err != nil {
		return err
	}
	return c.split(ctx, cmdWrite, flags, p, off, int64(len(p)), c.maxWrite)
}

// WriteZeroes makes length bytes at off read as zeroes.
func (c *Client) WriteZeroes(ctx context.Context, off, length int64, zf ZeroFlags) error {
	f := c.Flags()
	if !f.CanWriteZeroes() {
		return fmt.Errorf("%w: write zeroes", ErrUnsupported)
	}
	var flags uint16
	if zf&ZeroNoHole != 0 {
		flags |= cmdFlagNoHole
	}
	if zf&ZeroFast != 0 {
		if !f.CanFastZero() {
			return fmt.Errorf("%w: fast zero", ErrUnsupported)
		}
		flags |= cmdFlagFastZero
	}
	if zf&ZeroFUA != 0 {
		if !f.CanFUA() {
			return fmt.Errorf("%w: FUA", ErrUnsupported)
		}
		flags |= cmdFlagFUA
	}
	if err := c.checkWrite("write-zeroes", off, length); err != nil {
		return err
	}
	return c.split(ctx, cmdWriteZeroes, flags, nil, off, length, c.maxEffect())
}

// Trim tells the server that length bytes at off are no longer needed; it
// may discard them. Their contents are undefined until written again.
func (c *Client) Trim(ctx context.Context, off, length int64) error {
	if !c.Flags().CanTrim() {
		return fmt.Errorf("%w: trim", ErrUnsupported)
	}
	if err := c.checkWrite("trim", off, length); err != nil {
		return err
	}
	return c.split(ctx, cmdTrim, 0, nil, off, length, c.maxEffect())
}

// Flush makes every write the server has replied to persistent.
func (c *Client) Flush(ctx context.Context) error {
	if !c.Flags().CanFlush() {
		return fmt.Errorf("%w: flush", ErrUnsupported)
	}
	return c.do(ctx, &request{cmd: cmdFlush})
}

// split sends [off, off+length) as requests of at most max bytes, all in
// flight together (written in as few batches as the free slots allow), and
// waits for them all, woken once when the last completes.
func (c *Client) split(ctx context.Context, cmd, flags uint16, buf []byte, off, length int64, max uint32) error {
	if length == 0 {
		return nil
	}
	piece := func(at, n int64) *request {
		r := &request{cmd: cmd, flags: flags, off: uint64(off + at), length: uint32(n)}
		switch {
		case buf == nil:
		case cmd == cmdRead:
			r.rbuf = buf[at : at+n]
		default:
			r.wdata = buf[at : at+n]
		}
		return r
	}
	if length <= int64(max) {
		return c.do(ctx, piece(0, length))
	}
	reqs := make([]*request, 0, (length+int64(max)-1)/int64(max))
	grp := &group{done: make(chan struct{})}
	for at := int64(0); at < length; {
		n := min(length-at, int64(max))
		r := piece(at, n)
		r.grp = grp
		reqs = append(reqs, r)
		at += n
	}
	grp.left.Store(int32(len(reqs)))
	sent, err := c.startBatch(ctx, reqs)
	if err != nil || sent < len(reqs) {
		if werr := c.waitAll(ctx, reqs[:sent]); err == nil {
			err = werr
		}
		return err
	}
	// One wake for the whole call; on ctx's end, each request is
	// abandoned as wait does.
	select {
	case <-grp.done:
	case <-ctx.Done():
		return c.waitAll(ctx, reqs)
	}
	for _, r := range reqs {
		if r.err != nil {
			return r.err
		}
	}
	return nil
}

// maxEffect is the longest request without payload (trim, write zeroes,
// block status): the 32-bit length field rounded down to the minimum block
// size and to 4 KiB. nbdkit 1.32 aborts on a block status request of
// 2^32-1 bytes over a larger hole, and aligned requests suit servers better.
func (c *Client) maxEffect() uint32 {
	return uint32(uint64(maxEffectLen) + 1 - uint64(max(c.BlockSize().Min, 4096)))
}

func (c *Client) checkWrite(op string, off, length int64) error {
	if c.Flags().ReadOnly() {
		return fmt.Errorf("nbd %s: %w", op, ErrReadOnly)
	}
	return c.checkRange(op, off, length)
}

// checkRange checks that [off, off+length) lies in the export and is
// aligned to the minimum block size (the export's end counts as aligned).
func (c *Client) checkRange(op string, off, length int64) error {
	size := c.Size()
	if off < 0 || length < 0 || off > size || length > size-off {
		return fmt.Errorf("nbd %s at %d+%d: %w of %d bytes", op, off, length, ErrOutOfRange, size)
	}
	if m := int64(c.BlockSize().Min); off%m != 0 || (length%m != 0 && off+length != size) {
		return fmt.Errorf("nbd %s at %d+%d: %w (%d)", op, off, length, ErrUnaligned, m)
	}
	return nil
}
