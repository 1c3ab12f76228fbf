package target

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"

	"github.com/ferry-v2v/ferry/pkg/durable"
)

// uploadMarks record which chunks of a cache image are durably on the
// target volume: a chunk is marked only after the volume flushed it. They
// belong to one generation of the cache image and one volume; the file
// beside the cache checkpoint (cache.UploadCheckpointPath) lets an agent
// killed mid-upload resume where it was.
type uploadMarks struct {
	path       string
	generation string
	volume     string
	size       int64
	chunk      int64
	done       []uint64
}

const (
	upMagic   = "FERRYUPL"
	upVersion = 1
)

func newUploadMarks(path, generation, volume string, size, chunk int64) *uploadMarks {
	n := int((size + chunk - 1) / chunk)
	return &uploadMarks{path: path, generation: generation, volume: volume, size: size, chunk: chunk, done: make([]uint64, (n+63)/64)}
}

// loadUploadMarks reads the marks at path when they describe this
// generation, volume, size and chunk size; otherwise (no file, a damaged
// one, another image or volume) it reports false with no chunk marked.
func loadUploadMarks(path, generation, volume string, size, chunk int64) (*uploadMarks, bool, error) {
	m := newUploadMarks(path, generation, volume, size, chunk)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return m, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("load upload checkpoint: %w", err)
	}
	got, err := decodeUploadMarks(b)
	if err != nil || got.generation != generation || got.volume != volume || got.size != size || got.chunk != chunk {
		return m, false, nil
	}
	got.path = path
	return got, true, nil
}

// decodeUploadMarks parses a file written by save.
func decodeUploadMarks(b []byte) (*uploadMarks, error) {
	le := binary.LittleEndian
	bad := fmt.Errorf("upload checkpoint: damaged (%d bytes)", len(b))
	if len(b) < len(upMagic)+4+4 || string(b[:len(upMagic)]) != upMagic || crc32.ChecksumIEEE(b[:len(b)-4]) != le.Uint32(b[len(b)-4:]) {
		return nil, bad
	}
	r := b[len(upMagic):]
	if le.Uint32(r) != upVersion {
		return nil, bad
	}
	r = r[4:]
	var strs [2]string
	for i := range strs {
		if len(r) < 4 || uint32(len(r)) < 4+le.Uint32(r) {
			return nil, bad
		}
		n := le.Uint32(r)
		strs[i], r = string(r[4:4+n]), r[4+n:]
	}
	if len(r) < 16+4 {
		return nil, bad
	}
	size, chunk := int64(le.Uint64(r)), int64(le.Uint64(r[8:]))
	if size < 0 || chunk <= 0 {
		return nil, bad
	}
	m := newUploadMarks("", strs[0], strs[1], size, chunk)
	r = r[16 : len(r)-4]
	if len(r) != 8*len(m.done) {
		return nil, bad
	}
	for i := range m.done {
		m.done[i] = le.Uint64(r[8*i:])
	}
	return m, nil
}

func (m *uploadMarks) header() []byte {
	le := binary.LittleEndian
	b := []byte(upMagic)
	b = le.AppendUint32(b, upVersion)
	for _, s := range []string{m.generation, m.volume} {
		b = le.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	b = le.AppendUint64(b, uint64(m.size))
	return le.AppendUint64(b, uint64(m.chunk))
}

func (m *uploadMarks) encode() []byte {
	le := binary.LittleEndian
	b := m.header()
	for _, w := range m.done {
		b = le.AppendUint64(b, w)
	}
	return le.AppendUint32(b, crc32.ChecksumIEEE(b))
}

func (m *uploadMarks) chunks() int { return int((m.size + m.chunk - 1) / m.chunk) }

func (m *uploadMarks) isDone(i int) bool { return m.done[i/64]&(1<<(i%64)) != 0 }

// count is the number of chunks marked.
func (m *uploadMarks) count() int {
	n := 0
	for i := range m.chunks() {
		if m.isDone(i) {
			n++
		}
	}
	return n
}

func (m *uploadMarks) mark(chunks []int) {
	for _, i := range chunks {
		m.done[i/64] |= 1 << (i % 64)
	}
}

// save replaces the file durably: a temporary file, fsync, rename, fsync
// of the directory.
func (m *uploadMarks) save() error {
	if err := durable.WriteFile(m.path, m.encode(), 0o600); err != nil {
		return fmt.Errorf("save upload checkpoint: %w", err)
	}
	return nil
}
