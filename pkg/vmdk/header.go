package vmdk

import (
	"bytes"
	"encoding/binary"
)

// SectorSize is the unit of every offset and size in a VMDK.
const SectorSize = 512

// Header flags (SparseExtentHeader.flags).
const (
	FlagValidNewline   = 1 << 0  // the newline check bytes are meaningful
	FlagRedundantGD    = 1 << 1  // a redundant grain directory is kept
	FlagZeroedGTE      = 1 << 2  // a grain table entry of 1 means a zeroed grain
	FlagCompressed     = 1 << 16 // grains are compressed
	FlagMarkers        = 1 << 17 // the extent holds grain and metadata markers
	CompressionNone    = 0
	CompressionDeflate = 1
)

// GDAtEnd is the grain directory offset of a stream's header: the real one
// is in the footer at the end of the stream.
const GDAtEnd = ^uint64(0)

// Limits that keep hostile input from costing unbounded memory or time.
// Real disks stay far inside them: VMware writes 64 KiB grains and 512
// entries per grain table, and a hosted sparse extent holds at most 2 TiB.
const (
	MaxGrainSectors = 2048           // 1 MiB grains
	MaxGTEsPerGT    = 512            // as VMware and qemu write them
	MaxCapacity     = int64(1) << 46 // 64 TiB, in bytes
	maxDescriptor   = 1 << 20        // bytes of an embedded descriptor
)

const (
	magicKDMV     = 0x564d444b // "KDMV" as the file spells it
	magicCOWD     = 0x44574f43 // "COWD": vmfsSparse (ESX 3 delta disks)
	magicSESparse = 0x00000000cafebabe
	headerLen     = 79 // bytes of SparseExtentHeader before its padding
	newlineCheck  = "\n \r\n"
)

// Header is a hosted sparse extent's SparseExtentHeader (also the footer
// of a stream). Offsets and sizes are in sectors, as on disk.
type Header struct {
	Version           uint32
	Flags             uint32
	Capacity          uint64 // virtual disk sectors in this extent
	GrainSize         uint64 // sectors per grain
	DescriptorOffset  uint64 // embedded descriptor, 0 if none
	DescriptorSize    uint64
	NumGTEsPerGT      uint32
	RGDOffset         uint64 // redundant grain directory
	GDOffset          uint64 // grain directory, or GDAtEnd
	OverHead          uint64 // sectors of metadata before the first grain
	UncleanShutdown   bool
	CompressAlgorithm uint16
}

// Compressed reports whether grains are deflate-compressed.
func (h Header) Compressed() bool {
	return h.Flags&FlagCompressed != 0 || h.CompressAlgorithm == CompressionDeflate
}

// HasMarkers reports whether grains and metadata are preceded by markers.
func (h Header) HasMarkers() bool { return h.Flags&FlagMarkers != 0 }

// ZeroedGrains reports whether a grain table entry of 1 is a zeroed grain.
func (h Header) ZeroedGrains() bool { return h.Flags&FlagZeroedGTE != 0 }

// GrainBytes is the size of a grain in bytes.
func (h Header) GrainBytes() int64 { return int64(h.GrainSize) * SectorSize }

// Size is the virtual disk size in bytes of this extent.
func (h Header) Size() int64 { return int64(h.Capacity) * SectorSize }

// gtSpan is the bytes of disk one grain table covers.
func (h Header) gtSpan() int64 { return int64(h.NumGTEsPerGT) * h.GrainBytes() }

// gdEntries is the number of grain directory entries.
func (h Header) gdEntries() int64 { return (h.Size() + h.gtSpan() - 1) / h.gtSpan() }

// gtBytes is the bytes of one grain table.
func (h Header) gtBytes() int64 { return int64(h.NumGTEsPerGT) * 4 }

// parseHeader decodes and checks the sector at off (the file's first, or a
// stream's footer). Input that is no sparse extent at all is ErrNotVMDK;
// other VMDK extent kinds are ErrUnsupported.
func parseHeader(b []byte, off int64) (Header, error) {
	if err := sniff(b); err != nil {
		return Header{}, err
	}
	if len(b) < headerLen {
		return Header{}, corruptf(off, "header of %d bytes", len(b))
	}
	le := binary.LittleEndian
	h := Header{
		Version:           le.Uint32(b[4:]),
		Flags:             le.Uint32(b[8:]),
		Capacity:          le.Uint64(b[12:]),
		GrainSize:         le.Uint64(b[20:]),
		DescriptorOffset:  le.Uint64(b[28:]),
		DescriptorSize:    le.Uint64(b[36:]),
		NumGTEsPerGT:      le.Uint32(b[44:]),
		RGDOffset:         le.Uint64(b[48:]),
		GDOffset:          le.Uint64(b[56:]),
		OverHead:          le.Uint64(b[64:]),
		UncleanShutdown:   b[72] != 0,
		CompressAlgorithm: le.Uint16(b[77:]),
	}
	if h.Flags&FlagValidNewline != 0 && !bytes.Equal(b[73:77], []byte(newlineCheck)) {
		return h, corruptf(off+73, "newline check bytes %q: the file went through a text-mode transfer", b[73:77])
	}
	return h, h.check(off)
}

// sniff tells a sparse extent from other things that start a VMDK file.
func sniff(b []byte) error {
	switch {
	case len(b) >= 4 && binary.LittleEndian.Uint32(b) == magicKDMV:
		return nil
	case len(b) >= 4 && binary.LittleEndian.Uint32(b) == magicCOWD:
		return unsupportedf("a COWD (vmfsSparse) extent, as ESX snapshots write; consolidate the disk first")
	case len(b) >= 8 && binary.LittleEndian.Uint64(b) == magicSESparse:
		return unsupportedf("a seSparse extent (an ESXi snapshot or space-efficient disk); consolidate the disk first")
	case isDescriptor(b):
		return unsupportedf("a descriptor file, not an extent: read it with ParseDescriptor and OpenDisk")
	}
	return ErrNotVMDK
}

// check keeps the header's numbers inside what a real disk uses.
func (h Header) check(off int64) error {
	switch {
	case h.Version == 0 || h.Version > 3:
		return unsupportedf("sparse extent version %d", h.Version)
	case h.Capacity == 0 && h.DescriptorOffset != 0:
		return unsupportedf("a sparse extent without capacity that only holds a descriptor")
	case h.Capacity == 0 || h.Capacity > uint64(MaxCapacity/SectorSize):
		return corruptf(off+12, "capacity of %d sectors", h.Capacity)
	case h.GrainSize == 0 || h.GrainSize > MaxGrainSectors:
		return corruptf(off+20, "grain of %d sectors (at most %d)", h.GrainSize, MaxGrainSectors)
	case h.NumGTEsPerGT == 0 || h.NumGTEsPerGT > MaxGTEsPerGT:
		return corruptf(off+44, "%d entries per grain table (at most %d)", h.NumGTEsPerGT, MaxGTEsPerGT)
	case h.CompressAlgorithm > CompressionDeflate:
		return unsupportedf("compression algorithm %d", h.CompressAlgorithm)
	case h.Compressed() && !h.HasMarkers():
		return unsupportedf("compressed grains without grain markers")
	case h.DescriptorSize > maxDescriptor/SectorSize:
		return corruptf(off+36, "descriptor of %d sectors", h.DescriptorSize)
	case h.OverHead > uint64(MaxCapacity/SectorSize):
		return corruptf(off+64, "overhead of %d sectors", h.OverHead)
	}
	return nil
}
