package vmdk

import (
	"bufio"
	"bytes"
	"compress/flate"
	"compress/zlib"
	"encoding/binary"
	"fmt"
	"io"
)

// streamSpec says how makeStream lays a VMware-style streamOptimized VMDK
// out. qemu-img writes streamOptimized with its tables up front; VMware's
// NFC export puts them behind the grains with markers, and this writer
// (test-only) does so the marker path is tested against qemu's reader.
type streamSpec struct {
	grainSectors int64
	rawDeflate   bool // RFC 1951 grains instead of zlib
	zeroGrains   bool // write all-zero grains as data, as some exporters do
	partialLast  bool // compress only the disk's bytes of a last partial grain
}

// makeStream encodes disk (whole sectors) as a VMware streamOptimized VMDK.
func makeStream(disk []byte, spec streamSpec) []byte {
	if spec.grainSectors == 0 {
		spec.grainSectors = 128
	}
	var out bytes.Buffer
	w := newStreamWriter(&out, int64(len(disk)), spec.grainSectors)
	grain := spec.grainSectors * SectorSize
	for off := int64(0); off < int64(len(disk)); off += grain {
		data := disk[off:min(int64(len(disk)), off+grain)]
		if allZero(data) && !spec.zeroGrains {
			continue
		}
		if int64(len(data)) < grain && !spec.partialLast {
			data = append(bytes.Clone(data), make([]byte, grain-int64(len(data)))...)
		}
		w.grain(off, compress(data, spec.rawDeflate))
	}
	if err := w.close(); err != nil {
		panic(err)
	}
	return out.Bytes()
}

// streamWriter writes a stream as VMware lays it out: header (grain
// directory at the end), descriptor, then grains with markers, each grain
// table behind its grains, the directory, the footer and end of stream.
type streamWriter struct {
	w     *bufio.Writer
	pos   int64
	h     Header
	gd    []uint32
	gt    []uint32
	curGT int64
}

func newStreamWriter(w io.Writer, capacity, grainSectors int64) *streamWriter {
	desc := fmt.Sprintf("# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n"+
		"createType=\"streamOptimized\"\n\nRW %d SPARSE \"disk.vmdk\"\n\nddb.adapterType = \"lsilogic\"\n"+
		"ddb.geometry.cylinders = \"1\"\nddb.geometry.heads = \"255\"\nddb.geometry.sectors = \"63\"\n",
		capacity/SectorSize)
	descSectors := roundUp(int64(len(desc)), SectorSize) / SectorSize
	s := &streamWriter{w: bufio.NewWriterSize(w, 1<<20), h: Header{
		Version: 3, Flags: FlagValidNewline | FlagCompressed | FlagMarkers,
		Capacity: uint64(capacity / SectorSize), GrainSize: uint64(grainSectors),
		DescriptorOffset: 1, DescriptorSize: uint64(descSectors), NumGTEsPerGT: 512,
		GDOffset: GDAtEnd, OverHead: uint64(1 + descSectors), CompressAlgorithm: CompressionDeflate,
	}}
	s.gd = make([]uint32, s.h.gdEntries())
	s.gt = make([]uint32, 512)
	s.write(encodeHeader(s.h))
	s.write([]byte(desc))
	s.pad()
	return s
}

func (s *streamWriter) write(b []byte) {
	s.w.Write(b)
	s.pos += int64(len(b))
}

func (s *streamWriter) pad() { s.write(make([]byte, roundUp(s.pos, SectorSize)-s.pos)) }

// grain writes the compressed grain for disk offset off; grains come in
// increasing order.
func (s *streamWriter) grain(off int64, z []byte) {
	g := off / s.h.GrainBytes()
	if t := g / 512; t != s.curGT {
		s.flushGT()
		s.curGT = t
	}
	s.gt[g%512] = uint32(s.pos / SectorSize)
	var m [grainMarkerLen]byte
	binary.LittleEndian.PutUint64(m[:], uint64(off/SectorSize))
	binary.LittleEndian.PutUint32(m[8:], uint32(len(z)))
	s.write(m[:])
	s.write(z)
	s.pad()
}

// flushGT writes the current grain table, when it has grains.
func (s *streamWriter) flushGT() {
	if allZero32(s.gt) {
		return
	}
	s.marker(4, markerGT)
	s.gd[s.curGT] = uint32(s.pos / SectorSize)
	s.table(s.gt)
	clear(s.gt)
}

func (s *streamWriter) close() error {
	s.flushGT()
	s.marker(uint64(roundUp(int64(4*len(s.gd)), SectorSize)/SectorSize), markerGD)
	gdSector := s.pos / SectorSize
	s.table(s.gd)
	s.marker(1, markerFooter)
	f := s.h
	f.GDOffset = uint64(gdSector)
	s.write(encodeHeader(f))
	s.marker(0, markerEOS)
	return s.w.Flush()
}

func (s *streamWriter) marker(val uint64, typ uint32) {
	var m [SectorSize]byte
	binary.LittleEndian.PutUint64(m[:], val)
	binary.LittleEndian.PutUint32(m[12:], typ)
	s.write(m[:])
}

func (s *streamWriter) table(t []uint32) {
	b := make([]byte, 4*len(t))
	for i, v := range t {
		binary.LittleEndian.PutUint32(b[4*i:], v)
	}
	s.write(b)
	s.pad()
}

func allZero32(t []uint32) bool {
	for _, v := range t {
		if v != 0 {
			return false
		}
	}
	return true
}

func compress(b []byte, raw bool) []byte {
	var z bytes.Buffer
	if raw {
		w, _ := flate.NewWriter(&z, flate.BestSpeed)
		w.Write(b)
		w.Close()
		return z.Bytes()
	}
	w, _ := zlib.NewWriterLevel(&z, zlib.BestSpeed)
	w.Write(b)
	w.Close()
	return z.Bytes()
}

// encodeHeader is parseHeader's inverse.
func encodeHeader(h Header) []byte {
	b := make([]byte, SectorSize)
	le := binary.LittleEndian
	le.PutUint32(b, magicKDMV)
	le.PutUint32(b[4:], h.Version)
	le.PutUint32(b[8:], h.Flags)
	le.PutUint64(b[12:], h.Capacity)
	le.PutUint64(b[20:], h.GrainSize)
	le.PutUint64(b[28:], h.DescriptorOffset)
	le.PutUint64(b[36:], h.DescriptorSize)
	le.PutUint32(b[44:], h.NumGTEsPerGT)
	le.PutUint64(b[48:], h.RGDOffset)
	le.PutUint64(b[56:], h.GDOffset)
	le.PutUint64(b[64:], h.OverHead)
	copy(b[73:], newlineCheck)
	le.PutUint16(b[77:], h.CompressAlgorithm)
	return b
}
