package vmdk

import (
	"bytes"
	"compress/flate"
	"compress/zlib"
	"encoding/binary"
	"fmt"
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
	desc := fmt.Sprintf("# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n"+
		"createType=\"streamOptimized\"\n\nRW %d SPARSE \"disk.vmdk\"\n\nddb.adapterType = \"lsilogic\"\n"+
		"ddb.geometry.cylinders = \"1\"\nddb.geometry.heads = \"255\"\nddb.geometry.sectors = \"63\"\n",
		len(disk)/SectorSize)
	descSectors := roundUp(int64(len(desc)), SectorSize) / SectorSize
	h := Header{
		Version: 3, Flags: FlagValidNewline | FlagCompressed | FlagMarkers,
		Capacity: uint64(len(disk) / SectorSize), GrainSize: uint64(spec.grainSectors),
		DescriptorOffset: 1, DescriptorSize: uint64(descSectors), NumGTEsPerGT: 512,
		GDOffset: GDAtEnd, OverHead: uint64(1 + descSectors), CompressAlgorithm: CompressionDeflate,
	}
	out.Write(encodeHeader(h))
	out.WriteString(desc)
	pad(&out)
	gd := writeGrains(&out, disk, spec)
	gdSector := out.Len()/SectorSize + 1
	writeMarker(&out, uint64(roundUp(int64(4*len(gd)), SectorSize)/SectorSize), markerGD)
	writeTable(&out, gd)
	writeMarker(&out, 1, markerFooter)
	h.GDOffset = uint64(gdSector)
	out.Write(encodeHeader(h))
	writeMarker(&out, 0, markerEOS)
	return out.Bytes()
}

// writeGrains writes the grains, a grain table marker and table after each
// table's grains, and returns the grain directory.
func writeGrains(out *bytes.Buffer, disk []byte, spec streamSpec) []uint32 {
	grain := spec.grainSectors * SectorSize
	grains := (int64(len(disk)) + grain - 1) / grain
	gd := make([]uint32, (grains+511)/512)
	for t := range gd {
		gt := make([]uint32, 512)
		for j := range gt {
			g := int64(t)*512 + int64(j)
			if g >= grains {
				break
			}
			data := disk[g*grain : min(int64(len(disk)), (g+1)*grain)]
			if allZero(data) && !spec.zeroGrains {
				continue
			}
			if int64(len(data)) < grain && !spec.partialLast {
				data = append(bytes.Clone(data), make([]byte, grain-int64(len(data)))...)
			}
			gt[j] = uint32(out.Len() / SectorSize)
			z := compress(data, spec.rawDeflate)
			binary.Write(out, binary.LittleEndian, uint64(g*spec.grainSectors))
			binary.Write(out, binary.LittleEndian, uint32(len(z)))
			out.Write(z)
			pad(out)
		}
		writeMarker(out, 4, markerGT)
		gd[t] = uint32(out.Len() / SectorSize)
		writeTable(out, gt)
	}
	return gd
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

func writeMarker(out *bytes.Buffer, val uint64, typ uint32) {
	var m [SectorSize]byte
	binary.LittleEndian.PutUint64(m[:], val)
	binary.LittleEndian.PutUint32(m[12:], typ)
	out.Write(m[:])
}

func writeTable(out *bytes.Buffer, t []uint32) {
	binary.Write(out, binary.LittleEndian, t)
	pad(out)
}

func pad(out *bytes.Buffer) {
	out.Write(make([]byte, roundUp(int64(out.Len()), SectorSize)-int64(out.Len())))
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
