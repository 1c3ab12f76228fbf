package pipeline

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"sync"
	"time"

	"github.com/ferry-v2v/ferry/pkg/durable"
)

// Checkpoint defaults: how often completed chunks are made durable.
const (
	DefaultSaveInterval = time.Second
	// MaxSaveBytes and MinSaveBytes bound the automatic SaveBytes: 1/32 of
	// the disk's data, so a copy killed at any point past its first few
	// percent loses well under a fifth of what it had copied.
	MaxSaveBytes = 64 << 20
	MinSaveBytes = 2 << 20
)

// ErrCheckpoint reports a checkpoint that does not fit the copy.
var ErrCheckpoint = errors.New("checkpoint")

const (
	ckptMagic   = "FERRYCKP"
	ckptVersion = 1
	ckptHeader  = 8 + 4 + 4 + 8 + 8 + 8 // magic, version, reserved, size, chunk, written
)

// Checkpoint records which chunks of one disk are safely in its cache
// image, in a file next to it. A chunk is marked done only after the sink
// has flushed its write, so a mark never claims data the image does not
// durably hold.
//
// It also records a write frontier: every chunk below it may hold data
// written by an earlier run, every chunk above it is as the image was
// created (all zeroes). A copy persists the frontier ahead of its writes,
// so a killed run leaves no unrecorded write behind it. A restarted copy
// zeroes chunks below the frontier that are not done before it writes
// them (a compressed qcow2 cluster cannot be overwritten in place) and
// zeroes them when the source now holds only zeroes there.
type Checkpoint struct {
	path  string
	size  int64
	chunk int64

	// SaveInterval and SaveBytes bound the work a killed copy loses: done
	// marks are flushed and saved once SaveInterval has passed or SaveBytes
	// of data have been written since the last save, whichever is first,
	// and the workers wait while 2×SaveBytes of finished data are not yet
	// durable (a slow flush holds the copy back instead of letting the
	// unsaved work grow). A killed copy so re-reads at most
	// 2×SaveBytes plus the chunks it had in flight (InFlight×ChunkSize).
	// SaveInterval defaults to DefaultSaveInterval; SaveBytes 0 means 1/32
	// of the data to copy, from MinSaveBytes to MaxSaveBytes.
	SaveInterval time.Duration
	SaveBytes    int64

	saveMu sync.Mutex // held across a save, so the last file written is the newest state

	mu      sync.Mutex
	done    []uint64      // durable marks, one bit per chunk
	written int64         // the frontier, durable once a save returns
	prior   int64         // the frontier when the current copy began
	pending []int         // chunks complete but not yet durable
	dirty   int64         // data bytes behind pending
	saving  int64         // data bytes taken by a save that has not settled
	settled chan struct{} // closed and replaced each time a save settles
	sums    []Sum         // per chunk: durable for done chunks, in memory for pending ones
}

// LoadCheckpoint reads the checkpoint at path for a disk of size bytes in
// chunks of chunk bytes, or starts an empty one when there is none. A file
// that is damaged or was written for another size or chunk size is
// replaced by a checkpoint that trusts nothing: no chunk done, every chunk
// possibly written.
func LoadCheckpoint(path string, size, chunk int64) (*Checkpoint, error) {
	if size < 0 || chunk <= 0 {
		return nil, fmt.Errorf("%w: size %d, chunk %d", ErrCheckpoint, size, chunk)
	}
	c := &Checkpoint{
		path: path, size: size, chunk: chunk,
		SaveInterval: DefaultSaveInterval,
	}
	c.done = make([]uint64, (c.Chunks()+63)/64)
	c.sums = make([]Sum, c.Chunks())
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return c, c.loadSums(false)
	}
	if err != nil {
		return nil, fmt.Errorf("load checkpoint: %w", err)
	}
	valid := c.decode(b)
	if !valid {
		clear(c.done)
		c.written = size
	}
	return c, c.loadSums(valid)
}

// OpenCheckpoint reads an existing checkpoint, with the size and chunk
// size its file records: what verifying a finished copy needs.
func OpenCheckpoint(path string) (*Checkpoint, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("open checkpoint: %w", err)
	}
	if len(b) < ckptHeader {
		return nil, fmt.Errorf("open checkpoint %s: %w: %d bytes", path, ErrCheckpoint, len(b))
	}
	le := binary.LittleEndian
	size, chunk := int64(le.Uint64(b[16:])), int64(le.Uint64(b[24:]))
	if size < 0 || chunk <= 0 || chunk > MaxChunkSize {
		return nil, fmt.Errorf("open checkpoint %s: %w: size %d, chunk %d", path, ErrCheckpoint, size, chunk)
	}
	// A damaged file loads as a checkpoint with nothing done: it verifies
	// nothing.
	return LoadCheckpoint(path, size, chunk)
}

// Path returns the checkpoint's file.
func (c *Checkpoint) Path() string { return c.path }

// Size returns the disk size the checkpoint describes.
func (c *Checkpoint) Size() int64 { return c.size }

// ChunkSize returns the granularity of the marks.
func (c *Checkpoint) ChunkSize() int64 { return c.chunk }

// Chunks returns the number of chunks, the last one maybe short.
func (c *Checkpoint) Chunks() int { return int((c.size + c.chunk - 1) / c.chunk) }

// Done reports whether chunk i is durably in the cache.
func (c *Checkpoint) Done(i int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.isDone(i)
}

// Complete reports whether every chunk is durably in the cache.
func (c *Checkpoint) Complete() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.Chunks() {
		if !c.isDone(i) {
			return false
		}
	}
	return true
}

func (c *Checkpoint) isDone(i int) bool { return c.done[i/64]&(1<<(i%64)) != 0 }

// begin starts a copy: what earlier runs may have written is fixed, and
// completions not yet saved by an earlier run are forgotten (their chunks
// lie below the frontier, so they are rewritten safely).
func (c *Checkpoint) begin() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.prior = c.written
	c.pending, c.dirty = nil, 0
}

// mayBeWritten reports whether a run before the current one may have
// written chunk i.
func (c *Checkpoint) mayBeWritten(i int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return int64(i)*c.chunk < c.prior
}

// complete records that chunk i, holding n data bytes with checksum s,
// has been written; it becomes done at the next save. It returns the data
// bytes written since the last save.
func (c *Checkpoint) complete(i int, n int64, s Sum) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sums[i] = s
	c.pending = append(c.pending, i)
	c.dirty += n
	return c.dirty
}

// saveBytes is SaveBytes, or when 0 the share of data bytes to copy.
func (c *Checkpoint) saveBytes(data int64) int64 {
	if c.SaveBytes > 0 {
		return c.SaveBytes
	}
	return min(MaxSaveBytes, max(MinSaveBytes, data/32))
}

// takePending hands over the chunks completed since the last call and
// the data bytes behind them; the caller settles them with saved or
// giveBack.
func (c *Checkpoint) takePending() ([]int, int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, n := c.pending, c.dirty
	c.pending, c.dirty = nil, 0
	c.saving += n
	return p, n
}

// giveBack returns chunks taken by takePending whose save failed, so a
// later save can try again.
func (c *Checkpoint) giveBack(chunks []int, n int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pending = append(c.pending, chunks...)
	c.dirty += n
	c.settleLocked(n)
}

// saved settles n bytes taken by takePending that are now durable.
func (c *Checkpoint) saved(n int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.settleLocked(n)
}

func (c *Checkpoint) settleLocked(n int64) {
	c.saving -= n
	if c.settled != nil {
		close(c.settled)
		c.settled = nil
	}
}

// waitBelow blocks while limit or more data bytes are complete but not
// yet durable (pending, or in a save that has not settled), so that a
// copy killed at any moment loses at most limit bytes of finished work
// plus what it had in flight. It returns early only when ctx ends.
func (c *Checkpoint) waitBelow(ctx context.Context, limit int64) error {
	for {
		c.mu.Lock()
		if c.dirty+c.saving < limit {
			c.mu.Unlock()
			return nil
		}
		if c.settled == nil {
			c.settled = make(chan struct{})
		}
		ch := c.settled
		c.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// commit marks chunks done, after the sink flushed them, and saves: their
// checksums first, so a chunk the file says is done always has one.
func (c *Checkpoint) commit(chunks []int) error {
	c.saveMu.Lock()
	defer c.saveMu.Unlock()
	c.mu.Lock()
	recs := make([]byte, 0, len(chunks)*sumRecord)
	for _, i := range chunks {
		recs = appendSum(recs, i, c.sums[i])
	}
	c.mu.Unlock()
	if err := c.appendSums(recs); err != nil {
		return err
	}
	c.mu.Lock()
	for _, i := range chunks {
		c.done[i/64] |= 1 << (i % 64)
	}
	b := c.encode()
	c.mu.Unlock()
	return c.write(b)
}

// reserve makes sure the durable frontier covers [0, end), moving it to
// end+ahead (at most the disk size) and saving when it does not.
func (c *Checkpoint) reserve(end, ahead int64) error {
	c.saveMu.Lock()
	defer c.saveMu.Unlock()
	c.mu.Lock()
	if end <= c.written {
		c.mu.Unlock()
		return nil
	}
	c.written = min(c.size, end+ahead)
	b := c.encode()
	c.mu.Unlock()
	return c.write(b)
}

// write replaces the file with b durably: a temporary file, fsync,
// rename, fsync of the directory. Called with saveMu held, not mu, so
// copies keep completing chunks meanwhile.
func (c *Checkpoint) write(b []byte) error {
	if err := durable.WriteFile(c.path, b, 0o600); err != nil {
		return fmt.Errorf("save checkpoint: %w", err)
	}
	return nil
}

// encode lays out magic, version, reserved, size, chunk, written, the
// done bitmap and a CRC-32 of all that, little endian. Called with mu held.
func (c *Checkpoint) encode() []byte {
	var b bytes.Buffer
	b.WriteString(ckptMagic)
	le := binary.LittleEndian
	b.Write(le.AppendUint32(nil, ckptVersion))
	b.Write(le.AppendUint32(nil, 0))
	for _, v := range []int64{c.size, c.chunk, c.written} {
		b.Write(le.AppendUint64(nil, uint64(v)))
	}
	for _, w := range c.done {
		b.Write(le.AppendUint64(nil, w))
	}
	b.Write(le.AppendUint32(nil, crc32.ChecksumIEEE(b.Bytes())))
	return b.Bytes()
}

// decode loads b into c and reports whether it was a valid checkpoint of
// the same size and chunk size.
func (c *Checkpoint) decode(b []byte) bool {
	le := binary.LittleEndian
	if len(b) != ckptHeader+8*len(c.done)+4 || string(b[:8]) != ckptMagic {
		return false
	}
	body, sum := b[:len(b)-4], le.Uint32(b[len(b)-4:])
	if crc32.ChecksumIEEE(body) != sum || le.Uint32(b[8:]) != ckptVersion {
		return false
	}
	size, chunk, written := int64(le.Uint64(b[16:])), int64(le.Uint64(b[24:])), int64(le.Uint64(b[32:]))
	if size != c.size || chunk != c.chunk || written < 0 || written > size {
		return false
	}
	c.written = written
	for i := range c.done {
		c.done[i] = le.Uint64(b[ckptHeader+8*i:])
	}
	return true
}

// Forget clears the done marks of every chunk overlapping [off, off+n),
// durably, and returns how many were done: the source changed there since
// they were copied, so the next copy reads them again (zeroing them first,
// as it does any chunk below the frontier that is not done).
func (c *Checkpoint) Forget(off, n int64) (int, error) {
	if n <= 0 || off >= c.size {
		return 0, nil
	}
	c.saveMu.Lock()
	defer c.saveMu.Unlock()
	c.mu.Lock()
	forgot := 0
	for i := int(off / c.chunk); i < c.Chunks() && int64(i)*c.chunk < off+n; i++ {
		if c.isDone(i) {
			c.done[i/64] &^= 1 << (i % 64)
			c.sums[i] = Sum{}
			forgot++
		}
	}
	b := c.encode()
	c.mu.Unlock()
	if forgot == 0 {
		return 0, nil
	}
	return forgot, c.write(b)
}
