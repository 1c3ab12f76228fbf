package pipeline

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
)

// memSource is a disk in memory described by its extents. It records the
// byte ranges read and can wait before each read.
type memSource struct {
	data    []byte
	extents []Extent
	delay   time.Duration // before each read

	mu    sync.Mutex
	reads []span
	// onRead, when set, is called after each read with the bytes read so far.
	onRead func(total int64)
}

// layout builds a source of size bytes whose data lies in the given spans
// (sorted, disjoint); data bytes come from seed, holes are zero.
func layout(size int64, seed uint64, data ...span) *memSource {
	s := &memSource{data: make([]byte, size)}
	r := rand.New(rand.NewPCG(seed, seed))
	pos := int64(0)
	for _, d := range data {
		if d.off > pos {
			s.extents = append(s.extents, Extent{Offset: pos, Length: d.off - pos, Zero: true})
		}
		for i := d.off; i < d.end; i++ {
			s.data[i] = byte(r.Uint32()) | 1 // never zero, so holes stand out
		}
		s.extents = append(s.extents, Extent{Offset: d.off, Length: d.end - d.off})
		pos = d.end
	}
	if pos < size {
		s.extents = append(s.extents, Extent{Offset: pos, Length: size - pos, Zero: true})
	}
	return s
}

func (s *memSource) Size() int64 { return int64(len(s.data)) }

// Extents answers at most three extents at a time, as servers may.
func (s *memSource) Extents(ctx context.Context, off, length int64) ([]Extent, error) {
	var out []Extent
	for _, e := range s.extents {
		if e.Offset+e.Length <= off || e.Offset >= off+length {
			continue
		}
		lo := max(e.Offset, off)
		out = append(out, Extent{Offset: lo, Length: e.Offset + e.Length - lo, Zero: e.Zero})
		if len(out) == 3 {
			break
		}
	}
	return out, nil
}

func (s *memSource) ReadAt(ctx context.Context, p []byte, off int64) error {
	if s.delay > 0 {
		select {
		case <-time.After(s.delay):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for _, e := range s.extents {
		if e.Zero && e.Offset < off+int64(len(p)) && off < e.Offset+e.Length {
			return fmt.Errorf("read %d+%d touches the zero extent %d+%d", off, len(p), e.Offset, e.Length)
		}
	}
	copy(p, s.data[off:])
	s.mu.Lock()
	s.reads = append(s.reads, span{off, off + int64(len(p))})
	total := int64(0)
	for _, r := range s.reads {
		total += r.end - r.off
	}
	f := s.onRead
	s.mu.Unlock()
	if f != nil {
		f(total)
	}
	return nil
}

// readBytes returns the bytes read so far, and those of them inside set.
func (s *memSource) readBytes(set []span) (all, inside int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return overlap(s.reads, set)
}

var errBroken = errors.New("sink broken")

// memSink is a cache image in memory that behaves like a compressed qcow2
// served by qemu-nbd: writes must cover whole granules (the disk's end
// excepted) and a granule written once cannot be written again until it
// is zeroed. durable is what a flush has made safe.
type memSink struct {
	mu        sync.Mutex
	data      []byte
	durable   []byte
	allocated map[int64]bool // granule index
	writes    []span
	zeroes    []span
	flushes   int

	// Once breakWrites writes and at least one flush are done, every call
	// fails, as if the process died. 0 never breaks.
	breakWrites int
	dead        bool
}

func newMemSink(size int64) *memSink {
	return &memSink{data: make([]byte, size), durable: make([]byte, size), allocated: map[int64]bool{}}
}

func (m *memSink) broken() bool {
	if m.breakWrites > 0 && m.flushes > 0 && len(m.writes) >= m.breakWrites {
		m.dead = true
	}
	return m.dead
}

func (m *memSink) WriteAt(ctx context.Context, p []byte, off int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.broken() {
		return errBroken
	}
	end := off + int64(len(p))
	if off%cache.Granule != 0 || (end%cache.Granule != 0 && end != int64(len(m.data))) {
		return fmt.Errorf("unaligned write %d+%d", off, len(p))
	}
	for g := off / cache.Granule; g*cache.Granule < end; g++ {
		if m.allocated[g] {
			return fmt.Errorf("write %d+%d: granule %d already written: input/output error", off, len(p), g)
		}
		m.allocated[g] = true
	}
	copy(m.data[off:], p)
	m.writes = append(m.writes, span{off, end})
	return nil
}

func (m *memSink) WriteZeroes(ctx context.Context, off, length int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.broken() {
		return errBroken
	}
	clear(m.data[off : off+length])
	for g := off / cache.Granule; g*cache.Granule < off+length; g++ {
		delete(m.allocated, g)
	}
	m.zeroes = append(m.zeroes, span{off, off + length})
	return nil
}

func (m *memSink) Flush(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.broken() {
		return errBroken
	}
	copy(m.durable, m.data)
	m.flushes++
	return nil
}

// crash keeps only what was flushed, as after a power cut.
func (m *memSink) crash() {
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(m.data, m.durable)
	m.writes, m.zeroes = nil, nil
	for g := range m.allocated {
		if isZero(m.data[g*cache.Granule : min(int64(len(m.data)), (g+1)*cache.Granule)]) {
			delete(m.allocated, g)
		}
	}
}

// written returns the spans written so far.
func (m *memSink) written() []span {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]span(nil), m.writes...)
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
