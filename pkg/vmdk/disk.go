package vmdk

import (
	"context"
	"errors"
	"fmt"
	"io"
)

// Opener opens an extent file a descriptor names, returning it and its size.
type Opener func(ctx context.Context, name string) (io.ReaderAt, int64, error)

// Disk is a VMDK described by a descriptor file: its extents (flat files,
// hosted sparse files, zero runs) laid end to end. Like SparseReader it is
// a pipeline Source. A flat extent has no map of its holes: all of it is
// data.
type Disk struct {
	desc  *Descriptor
	size  int64
	parts []part
	files []io.ReaderAt
}

// part is one extent of the disk, from off for n bytes.
type part struct {
	off, n  int64
	flat    io.ReaderAt // FLAT and VMFS: raw bytes from base
	base    int64
	sparse  *SparseReader // SPARSE
	flatLen int64         // size of the flat file
}

// OpenDisk opens the extents of a descriptor (monolithicFlat, vmfs,
// twoGbMaxExtentFlat, twoGbMaxExtentSparse, or a sparse disk's separate
// descriptor) with open.
func OpenDisk(ctx context.Context, d *Descriptor, open Opener) (*Disk, error) {
	if err := d.Supported(); err != nil {
		return nil, err
	}
	if len(d.Extents) == 0 {
		return nil, corruptf(0, "descriptor without extents")
	}
	disk := &Disk{desc: d}
	for _, e := range d.Extents {
		p, err := disk.openExtent(ctx, e, open)
		if err != nil {
			disk.Close()
			return nil, err
		}
		p.off = disk.size
		disk.size += p.n
		disk.parts = append(disk.parts, p)
	}
	return disk, nil
}

func (disk *Disk) openExtent(ctx context.Context, e ExtentDesc, open Opener) (part, error) {
	p := part{n: e.Sectors * SectorSize}
	if e.Type == "ZERO" {
		return p, nil
	}
	r, size, err := open(ctx, e.File)
	if err != nil {
		return p, fmt.Errorf("vmdk: open extent %q: %w", e.File, err)
	}
	disk.files = append(disk.files, r)
	if e.Type == "SPARSE" {
		s, err := OpenSparse(r, size)
		if errors.Is(err, ErrNotVMDK) {
			err = corruptf(0, "extent %q is no sparse extent", e.File)
		}
		if err != nil {
			return p, fmt.Errorf("vmdk: extent %q: %w", e.File, err)
		}
		if s.Size() < p.n {
			return p, corruptf(12, "sparse extent %q of %d bytes where the descriptor says %d", e.File, s.Size(), p.n)
		}
		p.sparse = s
		return p, nil
	}
	p.flat, p.base, p.flatLen = r, e.Offset*SectorSize, size
	if p.base+p.n > size {
		return p, corruptf(size, "flat extent %q of %d bytes ends before byte %d the descriptor says",
			e.File, size, p.base+p.n)
	}
	return p, nil
}

// Close closes the extent files that are io.Closers.
func (disk *Disk) Close() error {
	var errs []error
	for _, f := range disk.files {
		if c, ok := f.(io.Closer); ok {
			errs = append(errs, c.Close())
		}
	}
	disk.files = nil
	return errors.Join(errs...)
}

// Size is the virtual disk size in bytes.
func (disk *Disk) Size() int64 { return disk.size }

// Descriptor is the disk's descriptor.
func (disk *Disk) Descriptor() *Descriptor { return disk.desc }

// find returns the part holding off.
func (disk *Disk) find(off int64) *part {
	lo, hi := 0, len(disk.parts)
	for lo < hi {
		m := (lo + hi) / 2
		if p := &disk.parts[m]; off >= p.off+p.n {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return &disk.parts[lo]
}

// Extents describes [off, off+length) from off, at most 4 GiB of it.
func (disk *Disk) Extents(ctx context.Context, off, length int64) ([]Extent, error) {
	if off < 0 || length <= 0 || off >= disk.size {
		return nil, fmt.Errorf("vmdk: extents %d+%d of a %d-byte disk", off, length, disk.size)
	}
	end := min(disk.size, off+min(length, maxExtentWin))
	var out []Extent
	for off < end {
		p := disk.find(off)
		pos := min(end, p.off+p.n)
		var exts []Extent
		switch {
		case p.sparse != nil:
			var err error
			if exts, err = p.sparse.Extents(ctx, off-p.off, pos-off); err != nil {
				return nil, err
			}
			pos = off + total(exts)
		default:
			exts = []Extent{{Offset: off - p.off, Length: pos - off, Zero: p.flat == nil}}
		}
		for _, e := range exts {
			e.Offset += p.off
			if k := len(out) - 1; k >= 0 && out[k].Zero == e.Zero && out[k].Offset+out[k].Length == e.Offset {
				out[k].Length += e.Length
			} else {
				out = append(out, e)
			}
		}
		off = pos
	}
	return out, nil
}

func total(exts []Extent) int64 {
	var n int64
	for _, e := range exts {
		n += e.Length
	}
	return n
}

// ReadAt fills p with the disk's bytes from off.
func (disk *Disk) ReadAt(ctx context.Context, p []byte, off int64) error {
	if off < 0 || off+int64(len(p)) > disk.size {
		return fmt.Errorf("vmdk: read %d bytes at %d of a %d-byte disk", len(p), off, disk.size)
	}
	for len(p) > 0 {
		pt := disk.find(off)
		n := min(int64(len(p)), pt.off+pt.n-off)
		var err error
		switch {
		case pt.sparse != nil:
			err = pt.sparse.ReadAt(ctx, p[:n], off-pt.off)
		case pt.flat != nil:
			err = readAt(pt.flat, p[:n], pt.base+off-pt.off, pt.flatLen, "flat extent")
		default:
			clear(p[:n])
		}
		if err != nil {
			return err
		}
		p, off = p[n:], off+n
	}
	return nil
}
