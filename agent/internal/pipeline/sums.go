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
	"sync/atomic"

	"github.com/cespare/xxhash/v2"
	"golang.org/x/sync/errgroup"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
)

// End-to-end checksums. While CONVERTING, every chunk the copy completes
// gets a Sum of its content: the xxHash64 of its bytes, or, for a chunk
// the source says reads as zeroes, the mark SumZero, made without reading
// it. The sums are kept next to the checkpoint, in <checkpoint>.sums, so
// they survive a restart with the chunks they describe. After UPLOADING,
// Verify reads the target back and compares it chunk by chunk.

// SumKind says what a chunk's Sum records.
type SumKind uint8

const (
	// SumNone: no checksum recorded (the chunk is not done).
	SumNone SumKind = iota
	// SumData: Hash is the xxHash64 of the chunk's bytes.
	SumData
	// SumZero: the chunk reads as zeroes.
	SumZero
)

// Sum is the checksum of one chunk.
type Sum struct {
	Kind SumKind
	Hash uint64
}

func dataSum(b []byte) Sum { return Sum{Kind: SumData, Hash: xxhash.Sum64(b)} }

// sumRecord is one record of a sums file: chunk index, kind, hash, and a
// CRC-32 of those. Records are appended; the last one of a chunk wins.
const sumRecord = 8 + 1 + 8 + 4

func appendSum(b []byte, i int, s Sum) []byte {
	le := binary.LittleEndian
	start := len(b)
	b = le.AppendUint64(b, uint64(i))
	b = append(b, byte(s.Kind))
	b = le.AppendUint64(b, s.Hash)
	return le.AppendUint32(b, crc32.ChecksumIEEE(b[start:]))
}

// appendSums adds records to the sums file durably. Called with saveMu.
func (c *Checkpoint) appendSums(recs []byte) error {
	if len(recs) == 0 {
		return nil
	}
	f, err := os.OpenFile(cache.SumsPath(c.path), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("save checksums: %w", err)
	}
	_, err = f.Write(recs)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("save checksums: %w", err)
	}
	return nil
}

// loadSums reads the sums of the done chunks and rewrites the file with
// those only, dropping sums of chunks never marked done and a torn last
// record. Without a valid checkpoint the file is removed: it describes an
// image that is gone.
func (c *Checkpoint) loadSums(valid bool) error {
	path := cache.SumsPath(c.path)
	if !valid {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove stale checksums: %w", err)
		}
		return nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("load checksums: %w", err)
	}
	le := binary.LittleEndian
	for ; len(b) >= sumRecord; b = b[sumRecord:] {
		r := b[:sumRecord]
		if crc32.ChecksumIEEE(r[:sumRecord-4]) != le.Uint32(r[sumRecord-4:]) {
			break
		}
		i, kind := le.Uint64(r), SumKind(r[8])
		if i < uint64(len(c.sums)) && (kind == SumData || kind == SumZero) {
			c.sums[i] = Sum{Kind: kind, Hash: le.Uint64(r[9:])}
		}
	}
	var keep bytes.Buffer
	for i := range c.sums {
		if !c.isDone(i) {
			c.sums[i] = Sum{}
		} else if c.sums[i].Kind != SumNone {
			keep.Write(appendSum(nil, i, c.sums[i]))
		}
	}
	tmp := &Checkpoint{path: path}
	if err := tmp.write(keep.Bytes()); err != nil {
		return fmt.Errorf("compact checksums: %w", err)
	}
	return nil
}

// Sum returns the checksum of chunk i, when the chunk is done and has one.
func (c *Checkpoint) Sum(i int) (Sum, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if i < 0 || i >= len(c.sums) || !c.isDone(i) || c.sums[i].Kind == SumNone {
		return Sum{}, false
	}
	return c.sums[i], true
}

// Verifiable reports whether every chunk is done and has a checksum, so
// that Verify can check the whole disk.
func (c *Checkpoint) Verifiable() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.sums {
		if !c.isDone(i) || c.sums[i].Kind == SumNone {
			return false
		}
	}
	return true
}

// ErrMismatch is a target that does not hold what the source held.
var ErrMismatch = errors.New("differ from the source")

// MismatchError says which chunk of the target differs from the source.
type MismatchError struct {
	Offset, Length int64
	// Detail is what differs: a checksum, or a non-zero byte where the
	// source had zeroes.
	Detail string
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("the %d bytes at offset %d %v: %s", e.Length, e.Offset, ErrMismatch, e.Detail)
}

func (e *MismatchError) Unwrap() error { return ErrMismatch }

// VerifyStats describe a verification: bytes read back, and bytes the
// target said read as zeroes where the source had zeroes too.
type VerifyStats struct {
	ReadBytes, ZeroBytes int64
}

// Verify reads back the first cp.Size() bytes of target, inFlight chunks
// at a time, and compares each chunk with its checksum. Ranges the target
// reports as zeroes are not read. The first mismatch found is returned as
// a *MismatchError; a checkpoint that is not Verifiable is an error.
func Verify(ctx context.Context, target Source, cp *Checkpoint, inFlight int) (VerifyStats, error) {
	if !cp.Verifiable() {
		return VerifyStats{}, fmt.Errorf("verify: %w: not every chunk was copied with a checksum", ErrCheckpoint)
	}
	if target.Size() < cp.Size() {
		return VerifyStats{}, fmt.Errorf("verify: the target holds %d bytes, the source %d", target.Size(), cp.Size())
	}
	if inFlight <= 0 {
		inFlight = DefaultInFlight
	}
	var st struct{ read, zero atomic.Int64 }
	next := atomic.Int64{}
	g, gctx := errgroup.WithContext(ctx)
	for range inFlight {
		g.Go(func() error {
			buf := make([]byte, cp.ChunkSize())
			for {
				i := int(next.Add(1) - 1)
				if i >= cp.Chunks() {
					return nil
				}
				read, err := verifyChunk(gctx, target, cp, i, buf)
				if err != nil {
					return err
				}
				st.read.Add(read)
			}
		})
	}
	err := g.Wait()
	return VerifyStats{ReadBytes: st.read.Load(), ZeroBytes: cp.Size() - st.read.Load()}, err
}

// verifyChunk checks chunk i and returns the bytes it read.
func verifyChunk(ctx context.Context, target Source, cp *Checkpoint, i int, buf []byte) (int64, error) {
	off := int64(i) * cp.ChunkSize()
	end := min(cp.Size(), off+cp.ChunkSize())
	want, _ := cp.Sum(i)
	b := buf[:end-off]
	var read int64
	for pos := off; pos < end; {
		exts, err := target.Extents(ctx, pos, end-pos)
		if err != nil {
			return read, fmt.Errorf("verify: extents at %d: %w", pos, err)
		}
		if len(exts) == 0 || exts[0].Offset != pos || exts[0].Length <= 0 {
			return read, fmt.Errorf("verify: %w: bad extents at %d", ErrSource, pos)
		}
		for _, e := range exts {
			if e.Offset != pos || pos >= end {
				break
			}
			n := min(e.Length, end-pos)
			seg := b[pos-off : pos-off+n]
			if e.Zero {
				clear(seg)
			} else {
				if err := target.ReadAt(ctx, seg, pos); err != nil {
					return read, fmt.Errorf("verify: read %d bytes at %d: %w", n, pos, err)
				}
				read += n
			}
			pos += n
		}
	}
	switch want.Kind {
	case SumZero:
		if k := firstNonZero(b); k >= 0 {
			return read, &MismatchError{Offset: off, Length: end - off,
				Detail: fmt.Sprintf("the source read as zeroes, the target has data at offset %d", off+int64(k))}
		}
	default:
		if got := dataSum(b); got.Hash != want.Hash {
			return read, &MismatchError{Offset: off, Length: end - off,
				Detail: fmt.Sprintf("xxHash64 %016x, the source's %016x", got.Hash, want.Hash)}
		}
	}
	return read, nil
}

func firstNonZero(b []byte) int {
	for i, v := range b {
		if v != 0 {
			return i
		}
	}
	return -1
}
