package pipeline

import (
	"context"
	"fmt"
	"sync"
)

// DefaultStreamOpen is how many chunks a StreamSums holds open at most
// (32 MiB of 2 MiB chunks): more than a VMDK decoder has windows in
// flight (8 workers, 10 windows), so an in-order stream never reads back.
const DefaultStreamOpen = 16

// Chunk states of a StreamSums.
const (
	chunkUntouched uint8 = iota // nothing written: reads as zeroes
	chunkOpen                   // written in part, its bytes kept
	chunkSealed                 // summed
	chunkLate                   // written after it was summed: read back at Finish
)

// ImageReader reads back what a copy wrote.
type ImageReader interface {
	ReadAt(ctx context.Context, p []byte, off int64) error
}

// StreamSums records the checksums of a copy made outside Copy, by a
// writer that fills a new cache image with a disk's data mostly front to
// back, such as a decoded VMDK stream: the same Sum per chunk that Copy
// records, in the same checkpoint files, so Verify checks the target the
// same way.
//
// The writer calls Write with every write to the image once it returned,
// and Seal when it will write nothing more below an offset. A chunk is
// summed when it is sealed: the bytes written to it with zeroes between
// them, or SumZero, without hashing, when nothing was. A chunk is also
// sealed when more than MaxOpen are open, the lowest first. A chunk
// written after it was sealed (a stream out of disk order) is read back
// from the image at Finish, so a wrong Seal costs a read, never a wrong
// sum. Write and Seal are safe for concurrent use.
type StreamSums struct {
	cp      *Checkpoint
	maxOpen int

	mu    sync.Mutex
	state []uint8
	open  map[int]*openChunk
	free  [][]byte
}

type openChunk struct {
	buf     []byte
	written int64
}

// NewStreamSums starts recording into cp, which must have no chunk done:
// a stream copy starts from a new image. maxOpen bounds the chunks held
// in memory; 0 means DefaultStreamOpen.
func NewStreamSums(cp *Checkpoint, maxOpen int) (*StreamSums, error) {
	for i := range cp.Chunks() {
		if cp.Done(i) {
			return nil, fmt.Errorf("%w: chunk %d is already done; a stream copy starts from a new image", ErrCheckpoint, i)
		}
	}
	if maxOpen <= 0 {
		maxOpen = DefaultStreamOpen
	}
	cp.begin()
	return &StreamSums{cp: cp, maxOpen: maxOpen, state: make([]uint8, cp.Chunks()), open: map[int]*openChunk{}}, nil
}

// chunkLen is the length of chunk i, the last one maybe short.
func (s *StreamSums) chunkLen(i int) int64 {
	off := int64(i) * s.cp.ChunkSize()
	return min(s.cp.ChunkSize(), s.cp.Size()-off)
}

// Write records that p was written at off.
func (s *StreamSums) Write(p []byte, off int64) error {
	if off < 0 || off+int64(len(p)) > s.cp.Size() {
		return fmt.Errorf("checksums: a write of %d bytes at %d past the disk's %d bytes", len(p), off, s.cp.Size())
	}
	chunk := s.cp.ChunkSize()
	var evicted []int
	var bufs []*openChunk
	s.mu.Lock()
	for len(p) > 0 {
		i := int(off / chunk)
		at := off - int64(i)*chunk
		n := min(int64(len(p)), chunk-at)
		switch s.state[i] {
		case chunkUntouched:
			if len(s.open) >= s.maxOpen {
				j, oc := s.lowestOpen()
				evicted, bufs = append(evicted, j), append(bufs, oc)
			}
			s.open[i] = &openChunk{buf: s.newBuf(s.chunkLen(i))}
			s.state[i] = chunkOpen
			fallthrough
		case chunkOpen:
			oc := s.open[i]
			copy(oc.buf[at:at+n], p[:n])
			oc.written += n
		case chunkSealed:
			s.state[i] = chunkLate
		}
		p, off = p[n:], off+n
	}
	s.mu.Unlock()
	s.sum(evicted, bufs)
	return nil
}

// lowestOpen seals the open chunk of the lowest index. Called with mu.
func (s *StreamSums) lowestOpen() (int, *openChunk) {
	low := -1
	for i := range s.open {
		if low < 0 || i < low {
			low = i
		}
	}
	oc := s.open[low]
	delete(s.open, low)
	s.state[low] = chunkSealed
	return low, oc
}

// newBuf returns a zeroed buffer of n bytes. Called with mu.
func (s *StreamSums) newBuf(n int64) []byte {
	if k := len(s.free); k > 0 {
		b := s.free[k-1]
		s.free = s.free[:k-1]
		b = b[:n]
		clear(b)
		return b
	}
	return make([]byte, n, s.cp.ChunkSize())
}

// Seal sums the chunks that lie wholly below off: the writer will write
// nothing more there.
func (s *StreamSums) Seal(off int64) {
	end := int(min(off, s.cp.Size()) / s.cp.ChunkSize())
	if off >= s.cp.Size() {
		end = s.cp.Chunks()
	}
	var idx []int
	var bufs []*openChunk
	s.mu.Lock()
	for i, oc := range s.open {
		if i < end {
			idx, bufs = append(idx, i), append(bufs, oc)
			delete(s.open, i)
			s.state[i] = chunkSealed
		}
	}
	s.mu.Unlock()
	s.sum(idx, bufs)
}

// sum records the checksums of sealed chunks and frees their buffers.
func (s *StreamSums) sum(idx []int, bufs []*openChunk) {
	for k, i := range idx {
		s.cp.complete(i, bufs[k].written, dataSum(bufs[k].buf))
	}
	s.mu.Lock()
	for _, oc := range bufs {
		s.free = append(s.free, oc.buf)
	}
	s.mu.Unlock()
}

// Finish seals every chunk, reads back from img the chunks written after
// they were sealed, and makes the checksums and done marks durable. The
// image must have been flushed: a chunk is marked done only for data the
// image durably holds. It returns how many chunks were read back.
func (s *StreamSums) Finish(ctx context.Context, img ImageReader) (int, error) {
	s.Seal(s.cp.Size())
	s.mu.Lock()
	state := append([]uint8(nil), s.state...)
	s.mu.Unlock()
	var buf []byte
	late := 0
	for i, st := range state {
		switch st {
		case chunkUntouched:
			s.cp.complete(i, 0, Sum{Kind: SumZero})
		case chunkLate:
			if buf == nil {
				buf = make([]byte, s.cp.ChunkSize())
			}
			b := buf[:s.chunkLen(i)]
			off := int64(i) * s.cp.ChunkSize()
			if err := img.ReadAt(ctx, b, off); err != nil {
				return late, fmt.Errorf("checksums: read back %d bytes at %d: %w", len(b), off, err)
			}
			s.cp.complete(i, int64(len(b)), dataSum(b))
			late++
		}
	}
	pending, n := s.cp.takePending()
	if err := s.cp.commit(pending); err != nil {
		s.cp.giveBack(pending, n)
		return late, err
	}
	s.cp.saved(n)
	return late, nil
}
