package pipeline

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"

	"github.com/cespare/xxhash/v2"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
)

// End-to-end checksums. While CONVERTING, every chunk the copy completes
// gets a Sum of its content: the xxHash64 of its bytes, or, for a chunk
// the source says reads as zeroes, the mark SumZero, made without reading
// it. The sums are kept next to the checkpoint, in <checkpoint>.sums, so
// they survive a restart with the chunks they describe. After UPLOADING,
// Verify (verify.go) reads the target back and compares it chunk by chunk.

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
