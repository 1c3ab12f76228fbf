package vmdk

import (
	"encoding/binary"
	"io"
	"slices"
)

// Limits of table mode (grain tables ahead of the grains, read as a stream).
const (
	maxGDEntries = 1 << 24 // a 64 MiB directory
	readPiece    = 1 << 20 // tables are read in pieces this big, so a short stream costs little
)

// Grain table entry kinds.
type gteKind uint8

const (
	gteUnallocated gteKind = iota
	gteZeroed
	gteAllocated
)

func (h Header) kind(gte uint32) gteKind {
	switch {
	case gte == 0:
		return gteUnallocated
	case gte == 1 && h.ZeroedGrains():
		return gteZeroed
	}
	return gteAllocated
}

// loadGrainTables reads the grain directory and tables as the stream
// passes them and lists the allocated grains in file order.
func (s *StreamReader) loadGrainTables() error {
	h := &s.hdr
	n := h.gdEntries()
	if n > maxGDEntries {
		return unsupportedf("a grain directory of %d entries", n)
	}
	grains := (s.size + h.GrainBytes() - 1) / h.GrainBytes()
	if grains > 1<<32 {
		return unsupportedf("%d grains read as a stream", grains)
	}
	gdOff := int64(h.GDOffset) * SectorSize
	if err := s.in.skipTo(gdOff, "grain directory"); err != nil {
		return err
	}
	gd, err := s.readTable(n*4, "grain directory")
	if err != nil {
		return err
	}
	// Grain tables in file order, each tagged with its directory index.
	tables := make([]uint64, 0, n)
	for i := range n {
		if sec := binary.LittleEndian.Uint32(gd[4*i:]); sec != 0 {
			tables = append(tables, uint64(sec)<<32|uint64(i))
		}
	}
	slices.Sort(tables)
	for _, t := range tables {
		if err := s.readGT(int64(t>>32)*SectorSize, int64(uint32(t)), grains); err != nil {
			return err
		}
	}
	slices.Sort(s.grains)
	for i := 1; i < len(s.grains); i++ {
		if s.grains[i]>>32 == s.grains[i-1]>>32 {
			return corruptf(int64(s.grains[i]>>32)*SectorSize, "two grains at one place in the file")
		}
	}
	return nil
}

// readGT reads grain table i at off and adds its allocated grains.
func (s *StreamReader) readGT(off, i, grains int64) error {
	if err := s.in.skipTo(off, "grain table"); err != nil {
		return err
	}
	gt, err := s.readTable(s.hdr.gtBytes(), "grain table")
	if err != nil {
		return err
	}
	per := int64(s.hdr.NumGTEsPerGT)
	for j := range per {
		g := i*per + j
		gte := binary.LittleEndian.Uint32(gt[4*j:])
		if g >= grains || s.hdr.kind(gte) != gteAllocated {
			continue
		}
		s.grains = append(s.grains, uint64(gte)<<32|uint64(g))
	}
	return nil
}

// readTable reads n bytes of a table, in pieces so that a stream that ends
// early does not cost the whole table's memory first.
func (s *StreamReader) readTable(n int64, what string) ([]byte, error) {
	b := make([]byte, 0, min(n, readPiece))
	for int64(len(b)) < n {
		k := min(n-int64(len(b)), readPiece)
		b = slices.Grow(b, int(k))
		if err := s.in.readFull(b[len(b):len(b)+int(k)], what); err != nil {
			return nil, err
		}
		b = b[:len(b)+int(k)]
	}
	return b, nil
}

// nextListed reads the next grain the tables listed.
func (s *StreamReader) nextListed(buf []byte) (rawGrain, error) {
	if s.next == len(s.grains) {
		if s.hdr.HasMarkers() {
			s.markers, s.trailer = true, true
			return s.nextMarked(buf)
		}
		s.done = true
		return rawGrain{}, io.EOF
	}
	p := s.grains[s.next]
	s.next++
	at := int64(p>>32) * SectorSize
	off := int64(uint32(p)) * s.hdr.GrainBytes()
	if err := s.in.skipTo(at, "grain"); err != nil {
		return rawGrain{}, err
	}
	g := rawGrain{off: off, at: at, n: s.grainLen(off)}
	if !s.hdr.Compressed() {
		g.data = grow(buf, g.n)
		return g, s.in.readFull(g.data, "grain")
	}
	m := s.m[:grainMarkerLen]
	if err := s.in.readFull(m, "grain marker"); err != nil {
		return rawGrain{}, err
	}
	lba, size := binary.LittleEndian.Uint64(m[:]), binary.LittleEndian.Uint32(m[8:])
	if lba != uint64(off/SectorSize) || size == 0 || int64(size) > maxCompressed(s.hdr.GrainBytes()) {
		return rawGrain{}, corruptf(at, "grain marker for sector %d of %d bytes where the grain table "+
			"puts sector %d", lba, size, off/SectorSize)
	}
	g.compressed = true
	g.data = grow(buf, int(size))
	return g, s.in.readFull(g.data, "grain")
}
