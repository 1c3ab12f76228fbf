package vmdk

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Extent is a run of the virtual disk: Length bytes from Offset that hold
// data, or read as zeroes when Zero is set. It converts to the pipeline's
// extent type directly (pipeline.Extent(e)).
type Extent struct {
	Offset, Length int64
	Zero           bool
}

// Marker types of a stream's metadata markers.
const (
	markerEOS    = 0
	markerGT     = 1
	markerGD     = 2
	markerFooter = 3
)

const (
	grainMarkerLen = 12 // lba uint64, size uint32, then the compressed grain
	streamBuffer   = 256 << 10
)

// StreamReader decodes a sparse VMDK read front to back, as an NFC export
// or an HTTP download delivers it, and never seeks back.
//
// A streamOptimized disk from VMware (grain directory at the end) is read
// by its markers: compressed grains in increasing disk order up to the
// end-of-stream marker. A disk whose grain tables come before its grains
// (monolithicSparse, and streamOptimized as qemu-img writes it) is read by
// its tables: they are loaded first (8 bytes of memory per allocated
// grain), then the grains in file order, which is disk order for every
// disk written front to back. When that disk has markers, what follows
// its last grain is read too, to the end of the stream or its marker: a
// grain the tables do not list is ErrCorrupt, never silently dropped.
type StreamReader struct {
	in   streamIn
	hdr  Header
	desc *Descriptor
	size int64

	grains  []uint64 // table mode: sector<<32 | grain, in file order
	next    int
	markers bool  // marker mode
	trailer bool  // table mode with markers, past the last grain: no grain may follow
	lastEnd int64 // marker mode: end of the previous grain
	done    bool

	raw []byte
	buf []byte
	inf inflater
	m   [16]byte // a marker being read
}

// rawGrain is a grain as read: its disk offset, the disk bytes it covers
// (less than a grain only at the disk's end), its payload (compressed or
// not) and the stream offset it was found at.
type rawGrain struct {
	off, at    int64
	n          int
	data       []byte
	compressed bool
}

// OpenStream reads a sparse extent's header, descriptor and, when they come
// before the grains, its grain tables. Reading blocks on r; to give up, close
// what r reads from.
func OpenStream(r io.Reader) (*StreamReader, error) {
	s := &StreamReader{in: streamIn{r: bufio.NewReaderSize(r, streamBuffer)}}
	sector := make([]byte, SectorSize)
	n, err := io.ReadFull(s.in.r, sector)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return nil, fmt.Errorf("vmdk: read header: %w", err)
	}
	s.in.pos = int64(n)
	h, err := parseHeader(sector[:n], 0)
	if err != nil {
		return nil, err
	}
	s.hdr, s.size = h, h.Size()
	if err := s.readDescriptor(); err != nil {
		return nil, err
	}
	switch {
	case h.GDOffset != GDAtEnd && h.GDOffset < h.OverHead && h.GDOffset*SectorSize >= uint64(s.in.pos):
		err = s.loadGrainTables()
	case h.HasMarkers():
		s.markers = true
		err = s.in.skipTo(int64(h.OverHead)*SectorSize, "grains")
	default:
		err = unsupportedf("a sparse extent whose grain directory (sector %d) follows its grains cannot be "+
			"read as a stream; open it with OpenSparse", h.GDOffset)
	}
	if err != nil {
		return nil, err
	}
	s.buf = make([]byte, h.GrainBytes())
	return s, nil
}

// readDescriptor reads the embedded descriptor, when there is one, and
// refuses disks this package cannot read.
func (s *StreamReader) readDescriptor() error {
	d, err := embeddedDescriptor(&s.hdr, func(p []byte, off int64) error {
		if err := s.in.skipTo(off, "descriptor"); err != nil {
			return err
		}
		return s.in.readFull(p, "descriptor")
	})
	s.desc = d
	return err
}

// embeddedDescriptor reads and checks the descriptor a header points to.
func embeddedDescriptor(h *Header, read func(p []byte, off int64) error) (*Descriptor, error) {
	if h.DescriptorOffset == 0 || h.DescriptorSize == 0 {
		return nil, nil
	}
	off := int64(h.DescriptorOffset) * SectorSize
	if h.DescriptorOffset > uint64(MaxCapacity/SectorSize) {
		return nil, corruptf(28, "descriptor at sector %d", h.DescriptorOffset)
	}
	b := make([]byte, h.DescriptorSize*SectorSize)
	if err := read(b, off); err != nil {
		return nil, err
	}
	d, err := ParseDescriptor(b)
	if errors.Is(err, ErrNotVMDK) && len(bytes.TrimSpace(bytes.TrimRight(b, "\x00"))) == 0 {
		return nil, nil // room kept for a descriptor, as in the extents of a split disk
	}
	if errors.Is(err, ErrNotVMDK) {
		return nil, corruptf(off, "no disk descriptor where the header points")
	}
	if err != nil {
		return nil, err
	}
	return d, d.Supported()
}

// Capacity is the virtual disk size in bytes.
func (s *StreamReader) Capacity() int64 { return s.size }

// Header is the extent's header (or, for a stream, its first sector).
func (s *StreamReader) Header() Header { return s.hdr }

// Descriptor is the embedded descriptor, nil when there is none.
func (s *StreamReader) Descriptor() *Descriptor { return s.desc }

// BytesRead is how much of the stream has been consumed.
func (s *StreamReader) BytesRead() int64 { return s.in.pos }

// Next returns the next run of data: its extent and its bytes, valid until
// the next call. Grains that are unallocated, zeroed or hold only zeroes
// are skipped: they are the holes between runs. At the end it returns
// io.EOF.
func (s *StreamReader) Next(ctx context.Context) (Extent, []byte, error) {
	for {
		if err := ctx.Err(); err != nil {
			return Extent{}, nil, err
		}
		g, err := s.nextRaw(s.raw[:0])
		if err != nil {
			return Extent{}, nil, err
		}
		s.raw = g.data[:0]
		data, err := s.decode(&s.inf, g, s.buf)
		if err != nil {
			return Extent{}, nil, err
		}
		if !allZero(data) {
			return Extent{Offset: g.off, Length: int64(len(data))}, data, nil
		}
	}
}

// decode turns a raw grain into its disk bytes, in buf (one grain long).
func (s *StreamReader) decode(inf *inflater, g rawGrain, buf []byte) ([]byte, error) {
	if !g.compressed {
		return g.data, nil
	}
	n, err := inf.inflate(buf, g.data)
	if err != nil {
		return nil, corruptf(g.at, "grain for disk offset %d: %v", g.off, err)
	}
	if n < g.n {
		return nil, corruptf(g.at, "grain for disk offset %d inflates to %d bytes, not %d", g.off, n, g.n)
	}
	return buf[:g.n], nil
}

// nextRaw reads the next grain's payload into buf (grown as needed). It
// returns io.EOF after the last grain.
func (s *StreamReader) nextRaw(buf []byte) (rawGrain, error) {
	if s.done {
		return rawGrain{}, io.EOF
	}
	if s.markers {
		return s.nextMarked(buf)
	}
	return s.nextListed(buf)
}

// nextMarked walks markers to the next grain marker or the end of stream.
func (s *StreamReader) nextMarked(buf []byte) (rawGrain, error) {
	m := &s.m
	for {
		err := s.in.skipTo(roundUp(s.in.pos, SectorSize), "marker")
		if s.trailer && (err != nil || s.in.atEOF()) {
			s.done = true // qemu-img ends its streams without a marker
			return rawGrain{}, io.EOF
		}
		if err != nil {
			return rawGrain{}, err
		}
		at := s.in.pos
		if err := s.in.readFull(m[:grainMarkerLen], "marker"); err != nil {
			return rawGrain{}, err
		}
		val, size := binary.LittleEndian.Uint64(m[:]), binary.LittleEndian.Uint32(m[8:])
		if size != 0 && s.trailer {
			return rawGrain{}, corruptf(at, "a grain for sector %d that the grain tables do not list", val)
		}
		if size != 0 {
			return s.markedGrain(buf, at, val, size)
		}
		if err := s.in.readFull(m[grainMarkerLen:], "marker"); err != nil {
			return rawGrain{}, err
		}
		if err := s.metadata(at, val, binary.LittleEndian.Uint32(m[grainMarkerLen:])); err != nil {
			return rawGrain{}, err
		}
		if s.done {
			return rawGrain{}, io.EOF
		}
	}
}

// metadata consumes what follows a metadata marker at `at`.
func (s *StreamReader) metadata(at int64, sectors uint64, typ uint32) error {
	body := at + SectorSize
	if err := s.in.skipTo(body, "marker"); err != nil {
		return err
	}
	switch typ {
	case markerEOS:
		s.done = true
		return nil
	case markerGT, markerGD:
		if sectors > uint64(MaxCapacity/SectorSize) {
			return corruptf(at, "metadata marker of %d sectors", sectors)
		}
		return s.in.skipTo(body+int64(sectors)*SectorSize, "grain table")
	case markerFooter:
		return s.footer(body)
	}
	return corruptf(at, "unknown marker type %d", typ)
}

// footer reads the footer (a copy of the header with the real grain
// directory offset) and checks it describes the same disk.
func (s *StreamReader) footer(at int64) error {
	b := make([]byte, SectorSize)
	if err := s.in.readFull(b, "footer"); err != nil {
		return err
	}
	f, err := parseHeader(b, at)
	if errors.Is(err, ErrNotVMDK) {
		return corruptf(at, "footer without the sparse extent magic")
	}
	if err != nil {
		return err
	}
	if f.Capacity != s.hdr.Capacity || f.GrainSize != s.hdr.GrainSize {
		return corruptf(at, "footer of %d sectors in grains of %d; the header says %d in %d",
			f.Capacity, f.GrainSize, s.hdr.Capacity, s.hdr.GrainSize)
	}
	return nil
}

// markedGrain reads the grain behind a grain marker at `at`.
func (s *StreamReader) markedGrain(buf []byte, at int64, lba uint64, size uint32) (rawGrain, error) {
	gs := s.hdr.GrainSize
	if lba%gs != 0 || lba >= s.hdr.Capacity {
		return rawGrain{}, corruptf(at, "grain marker for sector %d (grains of %d sectors, disk of %d)",
			lba, gs, s.hdr.Capacity)
	}
	off := int64(lba) * SectorSize
	if off < s.lastEnd {
		return rawGrain{}, unsupportedf("grain for disk offset %d after one ending at %d: a stream out of "+
			"disk order needs random access (OpenSparse)", off, s.lastEnd)
	}
	if int64(size) > maxCompressed(s.hdr.GrainBytes()) {
		return rawGrain{}, corruptf(at, "compressed grain of %d bytes", size)
	}
	g := rawGrain{off: off, at: at, n: s.grainLen(off), compressed: s.hdr.Compressed()}
	g.data = grow(buf, int(size))
	if err := s.in.readFull(g.data, "grain"); err != nil {
		return rawGrain{}, err
	}
	if !g.compressed {
		if len(g.data) < g.n {
			return rawGrain{}, corruptf(at, "uncompressed grain of %d bytes", size)
		}
		g.data = g.data[:g.n]
	}
	s.lastEnd = off + int64(g.n)
	return g, nil
}

// grainLen is the disk bytes of the grain at off: a grain, or what is left
// of the disk.
func (s *StreamReader) grainLen(off int64) int {
	return int(min(s.hdr.GrainBytes(), s.size-off))
}

func maxCompressed(grain int64) int64 { return 2*grain + 1024 }

func grow(b []byte, n int) []byte {
	if cap(b) < n {
		return make([]byte, n)
	}
	return b[:n]
}

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }

// streamIn is the stream with its position.
type streamIn struct {
	r   *bufio.Reader
	pos int64
}

// atEOF reports whether the stream has ended.
func (in *streamIn) atEOF() bool {
	_, err := in.r.Peek(1)
	return err == io.EOF
}

// readFull fills p; an early end of the stream is ErrCorrupt.
func (in *streamIn) readFull(p []byte, what string) error {
	n, err := io.ReadFull(in.r, p)
	in.pos += int64(n)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return corruptf(in.pos, "stream ends inside the %s (truncated)", what)
	}
	if err != nil {
		return fmt.Errorf("vmdk: read %s at byte %d: %w", what, in.pos, err)
	}
	return nil
}

// skipTo discards up to off, which must not be behind.
func (in *streamIn) skipTo(off int64, what string) error {
	if off < in.pos {
		return unsupportedf("the %s at byte %d lies behind byte %d already read: the layout "+
			"needs random access (OpenSparse)", what, off, in.pos)
	}
	n, err := in.r.Discard(int(min(off-in.pos, 1<<62)))
	in.pos += int64(n)
	if err == io.EOF {
		return corruptf(in.pos, "stream ends before the %s at byte %d (truncated)", what, off)
	}
	if err != nil {
		return fmt.Errorf("vmdk: read to byte %d: %w", off, err)
	}
	return nil
}
