package pipeline

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
)

// Marks are the done marks of a checkpoint file as they stand, read
// without changing anything: what an upload running beside the copy may
// take from the cache. A chunk marked done is durably in the cache image
// and is not written again by this copy.
type Marks struct {
	Size, ChunkSize int64
	done            []uint64
}

// ReadMarks reads the checkpoint at path, which a copy may be saving at
// the same time (saves replace the file by renaming, so a read sees one
// whole save). A file that is damaged is an error wrapping ErrCheckpoint;
// a missing one wraps fs.ErrNotExist.
func ReadMarks(path string) (Marks, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Marks{}, fmt.Errorf("read checkpoint: %w", err)
	}
	le := binary.LittleEndian
	if len(b) < ckptHeader+4 || string(b[:8]) != ckptMagic {
		return Marks{}, fmt.Errorf("read checkpoint %s: %w: not a checkpoint", path, ErrCheckpoint)
	}
	body := b[:len(b)-4]
	if crc32.ChecksumIEEE(body) != le.Uint32(b[len(b)-4:]) || le.Uint32(b[8:]) != ckptVersion {
		return Marks{}, fmt.Errorf("read checkpoint %s: %w: damaged", path, ErrCheckpoint)
	}
	m := Marks{Size: int64(le.Uint64(b[16:])), ChunkSize: int64(le.Uint64(b[24:]))}
	if m.Size < 0 || m.ChunkSize <= 0 {
		return Marks{}, fmt.Errorf("read checkpoint %s: %w: size %d, chunk %d", path, ErrCheckpoint, m.Size, m.ChunkSize)
	}
	words := (m.Chunks() + 63) / 64
	if len(body) != ckptHeader+8*words {
		return Marks{}, fmt.Errorf("read checkpoint %s: %w: %d bytes", path, ErrCheckpoint, len(b))
	}
	m.done = make([]uint64, words)
	for i := range m.done {
		m.done[i] = le.Uint64(body[ckptHeader+8*i:])
	}
	return m, nil
}

// Chunks is the number of chunks, the last one maybe short.
func (m Marks) Chunks() int { return int((m.Size + m.ChunkSize - 1) / m.ChunkSize) }

// Done reports whether chunk i is durably in the cache.
func (m Marks) Done(i int) bool {
	return i >= 0 && i/64 < len(m.done) && m.done[i/64]&(1<<(i%64)) != 0
}

// Complete reports whether every chunk is done.
func (m Marks) Complete() bool {
	for i := range m.Chunks() {
		if !m.Done(i) {
			return false
		}
	}
	return true
}
