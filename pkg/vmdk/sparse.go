package vmdk

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
)

const (
	maxCachedGTs = 1024    // grain tables kept in memory (2 MiB at 512 entries)
	maxExtentWin = 4 << 30 // bytes of disk one Extents call describes at most
	footerLen    = 3 * SectorSize
)

// SparseReader reads a hosted sparse extent (monolithicSparse, or a
// streamOptimized file at rest) with random access. It is a pipeline
// Source: Extents comes from the grain tables (allocated grains are data,
// zeroed and unallocated ones are zero) and ReadAt may be called from many
// goroutines.
type SparseReader struct {
	r    io.ReaderAt
	file int64
	hdr  Header
	desc *Descriptor
	size int64
	gd   []uint32

	mu  sync.Mutex
	gts map[int64][]uint32 // by directory index

	infs  sync.Pool // *inflater
	bufs  sync.Pool // *[]byte, 2 grains: a compressed grain, then one inflated
	grain int64
}

// OpenSparse reads the header (the footer of a stream whose header says
// the grain directory is at the end), the embedded descriptor and the
// grain directory of the sparse extent r, size bytes long.
func OpenSparse(r io.ReaderAt, size int64) (*SparseReader, error) {
	b := make([]byte, min(max(size, 0), SectorSize))
	if err := readAt(r, b, 0, size, "header"); err != nil {
		return nil, err
	}
	h, err := parseHeader(b, 0)
	if err != nil {
		return nil, err
	}
	s := &SparseReader{r: r, file: size, hdr: h, gts: map[int64][]uint32{}}
	if h.GDOffset == GDAtEnd {
		if err := s.readFooter(); err != nil {
			return nil, err
		}
	}
	s.size, s.grain = s.hdr.Size(), s.hdr.GrainBytes()
	if s.desc, err = embeddedDescriptor(&h, func(p []byte, off int64) error {
		return readAt(r, p, off, size, "descriptor")
	}); err != nil {
		return nil, err
	}
	if err := s.readGD(); err != nil {
		return nil, err
	}
	return s, nil
}

// readFooter replaces the header with the footer: a footer marker, the
// footer and the end-of-stream marker in the file's last three sectors.
func (s *SparseReader) readFooter() error {
	at := s.file - footerLen
	b := make([]byte, footerLen)
	if err := readAt(s.r, b, at, s.file, "footer"); err != nil {
		return err
	}
	le := binary.LittleEndian
	if le.Uint32(b[8:]) != 0 || le.Uint32(b[12:]) != markerFooter ||
		le.Uint64(b[2*SectorSize:]) != 0 || le.Uint32(b[2*SectorSize+8:]) != 0 ||
		le.Uint32(b[2*SectorSize+12:]) != markerEOS {
		return corruptf(at, "no footer and end-of-stream marker at the end of the file")
	}
	f, err := parseHeader(b[SectorSize:2*SectorSize], at+SectorSize)
	if errors.Is(err, ErrNotVMDK) {
		return corruptf(at+SectorSize, "footer without the sparse extent magic")
	}
	if err != nil {
		return err
	}
	if f.GDOffset == GDAtEnd {
		return corruptf(at+SectorSize, "footer without a grain directory offset")
	}
	f.DescriptorOffset, f.DescriptorSize = s.hdr.DescriptorOffset, s.hdr.DescriptorSize
	s.hdr = f
	return nil
}

func (s *SparseReader) readGD() error {
	h := &s.hdr
	n := h.gdEntries()
	off, err := s.tableOffset(h.GDOffset, n*4, "grain directory")
	if err != nil {
		return err
	}
	b := make([]byte, n*4)
	if err := readAt(s.r, b, off, s.file, "grain directory"); err != nil {
		return err
	}
	s.gd = make([]uint32, n)
	for i := range s.gd {
		s.gd[i] = binary.LittleEndian.Uint32(b[4*i:])
	}
	return nil
}

// tableOffset checks that a table of n bytes at sector lies in the file.
func (s *SparseReader) tableOffset(sector uint64, n int64, what string) (int64, error) {
	if sector == 0 || sector > uint64(s.file/SectorSize) || int64(sector)*SectorSize+n > s.file {
		return 0, corruptf(0, "%s of %d bytes at sector %d of a %d-byte file", what, n, sector, s.file)
	}
	return int64(sector) * SectorSize, nil
}

// Size is the virtual disk size in bytes.
func (s *SparseReader) Size() int64 { return s.size }

// Header is the extent's header (the footer's, for a stream).
func (s *SparseReader) Header() Header { return s.hdr }

// Descriptor is the embedded descriptor, nil when there is none.
func (s *SparseReader) Descriptor() *Descriptor { return s.desc }

// gte returns the grain table entry of grain g.
func (s *SparseReader) gte(g int64) (uint32, error) {
	per := int64(s.hdr.NumGTEsPerGT)
	i := g / per
	if s.gd[i] == 0 {
		return 0, nil
	}
	s.mu.Lock()
	gt, ok := s.gts[i]
	s.mu.Unlock()
	if !ok {
		off, err := s.tableOffset(uint64(s.gd[i]), s.hdr.gtBytes(), "grain table")
		if err != nil {
			return 0, err
		}
		b := make([]byte, s.hdr.gtBytes())
		if err := readAt(s.r, b, off, s.file, "grain table"); err != nil {
			return 0, err
		}
		gt = make([]uint32, per)
		for j := range gt {
			gt[j] = binary.LittleEndian.Uint32(b[4*j:])
		}
		s.mu.Lock()
		if len(s.gts) >= maxCachedGTs {
			clear(s.gts)
		}
		s.gts[i] = gt
		s.mu.Unlock()
	}
	return gt[g%per], nil
}

// Extents describes [off, off+length) from off, at most 4 GiB of it.
func (s *SparseReader) Extents(ctx context.Context, off, length int64) ([]Extent, error) {
	if off < 0 || length <= 0 || off >= s.size {
		return nil, fmt.Errorf("vmdk: extents %d+%d of a %d-byte disk", off, length, s.size)
	}
	end := min(s.size, off+min(length, maxExtentWin))
	var out []Extent
	for pos := off; pos < end; {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		g := pos / s.grain
		next, zero := min(end, (g+1)*s.grain), true
		if span := s.hdr.gtSpan(); s.gd[pos/span] == 0 {
			next = min(end, (pos/span+1)*span) // a grain table never allocated
		} else {
			gte, err := s.gte(g)
			if err != nil {
				return nil, err
			}
			zero = s.hdr.kind(gte) != gteAllocated
		}
		if k := len(out) - 1; k >= 0 && out[k].Zero == zero {
			out[k].Length = next - out[k].Offset
		} else {
			out = append(out, Extent{Offset: pos, Length: next - pos, Zero: zero})
		}
		pos = next
	}
	return out, nil
}

// ReadAt fills p with the disk's bytes from off.
func (s *SparseReader) ReadAt(ctx context.Context, p []byte, off int64) error {
	if off < 0 || off+int64(len(p)) > s.size {
		return fmt.Errorf("vmdk: read %d bytes at %d of a %d-byte disk", len(p), off, s.size)
	}
	for len(p) > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := s.readRun(p, off)
		if err != nil {
			return err
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// readRun fills the start of p: one grain, or a run of uncompressed grains
// that lie one after the other in the file too.
func (s *SparseReader) readRun(p []byte, off int64) (int, error) {
	g, in := off/s.grain, off%s.grain
	gte, err := s.gte(g)
	if err != nil {
		return 0, err
	}
	n := int(min(int64(len(p)), s.grain-in))
	switch {
	case s.hdr.kind(gte) != gteAllocated:
		clear(p[:n])
		return n, nil
	case s.hdr.Compressed():
		return n, s.readCompressed(p[:n], g, in, gte)
	}
	first := int64(gte)*SectorSize + in
	for last := gte; n < len(p); {
		next, err := s.gte(g + 1)
		if err != nil {
			return 0, err
		}
		if uint64(next) != uint64(last)+s.hdr.GrainSize {
			break
		}
		g, last = g+1, next
		n += int(min(int64(len(p)-n), s.grain))
	}
	return n, readAt(s.r, p[:n], first, s.file, "grain")
}

// readCompressed fills p from byte `in` of grain g, whose marker is at
// sector gte.
func (s *SparseReader) readCompressed(p []byte, g, in int64, gte uint32) error {
	at := int64(gte) * SectorSize
	bp, _ := s.bufs.Get().(*[]byte)
	if bp == nil {
		b := make([]byte, maxCompressed(s.grain)+s.grain)
		bp = &b
	}
	defer s.bufs.Put(bp)
	inf, _ := s.infs.Get().(*inflater)
	if inf == nil {
		inf = &inflater{}
	}
	defer s.infs.Put(inf)

	m := (*bp)[:grainMarkerLen]
	if err := readAt(s.r, m, at, s.file, "grain marker"); err != nil {
		return err
	}
	lba, size := binary.LittleEndian.Uint64(m), binary.LittleEndian.Uint32(m[8:])
	if lba != uint64(g)*s.hdr.GrainSize || size == 0 || int64(size) > maxCompressed(s.grain) {
		return corruptf(at, "grain marker for sector %d of %d bytes where the grain table puts sector %d",
			lba, size, uint64(g)*s.hdr.GrainSize)
	}
	src, dst := (*bp)[:size], (*bp)[maxCompressed(s.grain):]
	if err := readAt(s.r, src, at+grainMarkerLen, s.file, "grain"); err != nil {
		return err
	}
	n, err := inf.inflate(dst, src)
	if err != nil {
		return corruptf(at, "grain for disk offset %d: %v", g*s.grain, err)
	}
	if int64(n) < in+int64(len(p)) {
		return corruptf(at, "grain for disk offset %d inflates to %d bytes, not %d", g*s.grain, n,
			min(s.grain, s.size-g*s.grain))
	}
	copy(p, dst[in:])
	return nil
}

// readAt reads p at off of a file of size bytes; a file too short is
// ErrCorrupt.
func readAt(r io.ReaderAt, p []byte, off, size int64, what string) error {
	if off < 0 || off+int64(len(p)) > size {
		return corruptf(off, "the %s of %d bytes lies past the end of the %d-byte file", what, len(p), size)
	}
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		return corruptf(off+int64(n), "the %s ends after %d of %d bytes (truncated)", what, n, len(p))
	}
	return fmt.Errorf("vmdk: read %s at byte %d: %w", what, off, err)
}
