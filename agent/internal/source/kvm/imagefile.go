package kvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync/atomic"

	"github.com/ferry-v2v/ferry/agent/internal/pipeline"
)

// mapEntry is one extent of `qemu-img map --output=json`: where the guest
// range [Start, Start+Length) lives, in the image at chain depth Depth at
// file offset Offset, or that it reads as zeroes (Data false).
type mapEntry struct {
	Start  int64  `json:"start"`
	Length int64  `json:"length"`
	Depth  int    `json:"depth"`
	Data   bool   `json:"data"`
	Offset *int64 `json:"offset"`
}

// ImageFile reads a disk image (through its backing chain) over SSH
// without qemu-nbd, for hosts that have none: its allocation map comes
// from `qemu-img map --output=json` once, the data extents are read from
// the files with dd, and the holes and zero extents are never read nor
// sent. Only raw images and uncompressed qcow2 clusters can be read so.
type ImageFile struct {
	conn    func() *Conn
	disk    string
	chain   []string // the image files by depth
	size    int64
	entries []mapEntry
	read    atomic.Int64
	// slots bounds the reads in flight: each is an SSH session, and sshd
	// allows 10 per connection by default (MaxSessions).
	slots chan struct{}
}

// imageFileReads is how many reads of an image file run at once.
const imageFileReads = 4

var _ pipeline.Source = (*ImageFile)(nil)

// openImageFile maps the image of disk d.
func openImageFile(ctx context.Context, conn func() *Conn, d Disk) (*ImageFile, error) {
	c := conn()
	q := shellQuote(d.Path)
	out, err := runRemote(ctx, c.ssh, fmt.Sprintf("qemu-img info -U --backing-chain --output=json -f %s %s", d.Format, q))
	if err != nil {
		return nil, fmt.Errorf("disk %s: image chain: %w", d.Target, err)
	}
	var chain []struct {
		Filename    string `json:"filename"`
		VirtualSize int64  `json:"virtual-size"`
	}
	if err := json.Unmarshal([]byte(out), &chain); err != nil || len(chain) == 0 {
		return nil, fmt.Errorf("disk %s: parse the image chain: %v: %s", d.Target, err, out)
	}
	f := &ImageFile{conn: conn, disk: d.Target, size: chain[0].VirtualSize, slots: make(chan struct{}, imageFileReads)}
	for _, i := range chain {
		f.chain = append(f.chain, i.Filename)
	}
	out, err = runRemote(ctx, c.ssh, fmt.Sprintf("qemu-img map -U --output=json -f %s %s", d.Format, q))
	if err != nil {
		return nil, fmt.Errorf("disk %s: allocation map: %w", d.Target, err)
	}
	if err := json.Unmarshal([]byte(out), &f.entries); err != nil {
		return nil, fmt.Errorf("disk %s: parse the allocation map: %w", d.Target, err)
	}
	for _, e := range f.entries {
		if e.Data && (e.Offset == nil || e.Depth >= len(f.chain)) {
			return nil, fmt.Errorf("disk %s: the extent at %d has no file offset (a compressed qcow2 cluster?); "+
				"reading it needs qemu-nbd on the source host", d.Target, e.Start)
		}
	}
	return f, nil
}

// Size is the disk's virtual size.
func (f *ImageFile) Size() int64 { return f.size }

// ReadBytes is how many bytes were read from the image files.
func (f *ImageFile) ReadBytes() int64 { return f.read.Load() }

// at returns the index of the entry holding off.
func (f *ImageFile) at(off int64) int {
	return sort.Search(len(f.entries), func(i int) bool { return f.entries[i].Start+f.entries[i].Length > off })
}

// Extents describes [off, off+length) from the map.
func (f *ImageFile) Extents(_ context.Context, off, length int64) ([]pipeline.Extent, error) {
	end := min(off+length, f.size)
	var out []pipeline.Extent
	for i := f.at(off); i < len(f.entries) && f.entries[i].Start < end; i++ {
		e := f.entries[i]
		s, t := max(e.Start, off), min(e.Start+e.Length, end)
		if n := len(out); n > 0 && out[n-1].Zero == !e.Data && out[n-1].Offset+out[n-1].Length == s {
			out[n-1].Length += t - s
			continue
		}
		out = append(out, pipeline.Extent{Offset: s, Length: t - s, Zero: !e.Data})
	}
	if len(out) == 0 {
		return []pipeline.Extent{{Offset: off, Length: end - off, Zero: true}}, nil
	}
	return out, nil
}

// ReadAt fills p from off: the data extents from their files, the rest
// with zeroes.
func (f *ImageFile) ReadAt(ctx context.Context, p []byte, off int64) error {
	end := off + int64(len(p))
	clear(p)
	for i := f.at(off); i < len(f.entries) && f.entries[i].Start < end; i++ {
		e := f.entries[i]
		if !e.Data {
			continue
		}
		s, t := max(e.Start, off), min(e.Start+e.Length, end)
		if err := f.readFile(ctx, p[s-off:t-off], f.chain[e.Depth], *e.Offset+(s-e.Start)); err != nil {
			return err
		}
	}
	return nil
}

// readFile reads len(p) bytes of file at off on the source host.
func (f *ImageFile) readFile(ctx context.Context, p []byte, file string, off int64) error {
	select {
	case f.slots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-f.slots }()
	session, err := f.conn().ssh.NewSession()
	if err != nil {
		return fmt.Errorf("disk %s: open SSH session: %w", f.disk, err)
	}
	defer session.Close()
	stop := context.AfterFunc(ctx, func() { session.Close() })
	defer stop()
	var stderr strings.Builder
	session.Stderr = &stderr
	out, err := session.Output(fmt.Sprintf("dd if=%s bs=1M iflag=skip_bytes,count_bytes,fullblock skip=%d count=%d status=none",
		shellQuote(file), off, len(p)))
	if err == nil && len(out) != len(p) {
		err = fmt.Errorf("%d bytes instead of %d", len(out), len(p))
	}
	if err != nil {
		return fmt.Errorf("disk %s: read %s at %d: %w: %s", f.disk, file, off, errors.Join(err, ctx.Err()), strings.TrimSpace(stderr.String()))
	}
	copy(p, out)
	f.read.Add(int64(len(p)))
	return nil
}
