package vmware

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"path"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/vim25/mo"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
	"github.com/ferry-v2v/ferry/agent/internal/runner"
	"github.com/ferry-v2v/ferry/pkg/vmdk"
)

// maxDescriptor bounds a descriptor read from a disk URL.
const maxDescriptor = 1 << 20

// decodeSparse decodes a sparse VMDK (streamOptimized or monolithicSparse)
// read front to back into dst at base, checking it fits in limit bytes.
func decodeSparse(ctx context.Context, r io.Reader, dst Sink, base, limit int64, progress func(int64)) error {
	sr, err := vmdk.OpenStream(r)
	if err != nil {
		return err
	}
	if sr.Capacity() > limit {
		return fmt.Errorf("%w: the VMDK holds %d bytes where the disk has %d", ErrExport, sr.Capacity(), limit)
	}
	if base != 0 {
		dst = offsetSink{dst, base}
	}
	_, err = vmdk.CopyStream(ctx, sr, dst, vmdk.CopyOptions{Align: cache.Granule, Progress: func(done, _ int64) { progress(base + done) }})
	return err
}

// offsetSink writes at base onwards.
type offsetSink struct {
	Sink
	base int64
}

func (s offsetSink) WriteAt(ctx context.Context, p []byte, off int64) error {
	return s.Sink.WriteAt(ctx, p, s.base+off)
}

// copyDescriptor copies the extents a VMDK descriptor names, each read
// from the datastore next to the disk's file: flat extents as raw data,
// sparse ones decoded, zero ones skipped.
func copyDescriptor(ctx context.Context, conn *Conn, r io.Reader, dst Sink, vm *VM, disk Disk, job *runner.Job, progress func(int64)) error {
	text, err := io.ReadAll(io.LimitReader(r, maxDescriptor))
	if err != nil {
		return fmt.Errorf("%w: read the descriptor: %w", ErrExport, err)
	}
	desc, err := vmdk.ParseDescriptor(text)
	if err != nil {
		return err
	}
	if err := desc.Supported(); err != nil {
		return err
	}
	if desc.Capacity() > disk.CapacityBytes {
		return fmt.Errorf("%w: the descriptor describes %d bytes where the disk has %d", ErrExport, desc.Capacity(), disk.CapacityBytes)
	}
	var base int64
	for _, e := range desc.Extents {
		n := e.Sectors * vmdk.SectorSize
		if e.Type != "ZERO" {
			if err := copyExtent(ctx, conn, dst, vm, disk, job, e, base, progress); err != nil {
				return fmt.Errorf("extent %s: %w", e.File, err)
			}
		}
		base += n
		progress(base)
	}
	return dst.Flush(ctx)
}

func copyExtent(ctx context.Context, conn *Conn, dst Sink, vm *VM, disk Disk, job *runner.Job, e vmdk.ExtentDesc, base int64, progress func(int64)) error {
	var dsPath object.DatastorePath
	if !dsPath.FromString(disk.File) {
		return fmt.Errorf("%w: disk file %q is not a datastore path", ErrExport, disk.File)
	}
	dsPath.Path = path.Join(path.Dir(dsPath.Path), e.File)
	u, err := conn.datastoreURL(ctx, vm, dsPath)
	if err != nil {
		return err
	}
	body, err := conn.download(ctx, u)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrExport, err)
	}
	defer body.Close()
	lr := &limitedReader{ctx: ctx, r: body, lim: job.Downstream}
	n := e.Sectors * vmdk.SectorSize
	switch e.Type {
	case "FLAT", "VMFS":
		if _, err := io.CopyN(io.Discard, lr, e.Offset*vmdk.SectorSize); err != nil {
			return fmt.Errorf("%w: skip to the extent's start: %w", ErrExport, err)
		}
		return lr.explain(copyFlat(ctx, lr, dst, base, n, progress))
	case "SPARSE":
		return lr.explain(decodeSparse(ctx, lr, dst, base, n, progress))
	}
	return fmt.Errorf("%w: %s extents are not read", vmdk.ErrUnsupported, e.Type)
}

// datastoreURL is the HTTP address of a datastore file (/folder/...).
// An export's connection reads the datacenter's path once, when the
// export starts, so that the copy needs no SOAP call it would have to
// retry.
func (c *Conn) datastoreURL(ctx context.Context, vm *VM, p object.DatastorePath) (*url.URL, error) {
	var dcPath string
	if c.resume != nil && c.resume.dcPath != "" {
		dcPath = c.resume.dcPath
	} else {
		var err error
		if dcPath, err = c.datacenterPath(ctx, vm); err != nil {
			return nil, err
		}
	}
	return c.folderURL(dcPath, p), nil
}

// datacenterPath is the inventory path of vm's datacenter.
func (c *Conn) datacenterPath(ctx context.Context, vm *VM) (string, error) {
	chain, err := mo.Ancestors(ctx, c.vim, property.DefaultCollector(c.vim).Reference(), vm.Ref)
	if err != nil {
		return "", fmt.Errorf("datacenter of %s: %w", vm.Name, err)
	}
	dcPath := ""
	for i, e := range chain {
		if i == 0 {
			continue // the root folder
		}
		dcPath = path.Join(dcPath, e.Name)
		if e.Self.Type == "Datacenter" {
			break
		}
	}
	return dcPath, nil
}
