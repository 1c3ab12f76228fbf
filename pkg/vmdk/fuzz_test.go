package vmdk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// Fuzz targets. Whatever the input, the readers must return an error or
// a disk that keeps their contracts, without panicking, hanging or
// allocating without bound. Seeds are tiny disks made here, plus tiny
// qemu-img outputs when qemu-img is installed.

const (
	fuzzMaxOut   = 64 << 20 // decoded bytes looked at per input
	fuzzMaxCheck = 8 << 20  // capacity up to which the two stream paths are compared
)

// fuzzDisk is a small disk with data in a few grains and a partial tail.
func fuzzDisk(n int) []byte {
	d := make([]byte, n)
	for i := range 5000 {
		d[i] = byte(i*7 + 1)
	}
	copy(d[n-700:], bytes.Repeat([]byte("tail"), 175))
	return d
}

func streamSeeds(f *testing.F) {
	for _, spec := range []streamSpec{{grainSectors: 8}, {grainSectors: 8, rawDeflate: true, partialLast: true},
		{grainSectors: 1, zeroGrains: true}} {
		f.Add(makeStream(fuzzDisk(20<<10+512), spec))
	}
	for _, sub := range []string{"streamOptimized", "monolithicSparse"} {
		if b := qemuSeed(f, sub, 70<<10); b != nil {
			f.Add(b)
		}
	}
}

// qemuSeed converts a tiny disk with qemu-img, or returns nil without it.
func qemuSeed(f *testing.F, subformat string, size int) []byte {
	qemuImg, err := exec.LookPath("qemu-img")
	if err != nil {
		return nil
	}
	dir := f.TempDir()
	raw, out := filepath.Join(dir, "d.raw"), filepath.Join(dir, "d.vmdk")
	if err := os.WriteFile(raw, fuzzDisk(size), 0o644); err != nil {
		f.Fatal(err)
	}
	if b, err := exec.Command(qemuImg, "convert", "-f", "raw", "-O", "vmdk", "-o",
		"subformat="+subformat, raw, out).CombinedOutput(); err != nil {
		f.Fatalf("qemu-img: %v\n%s", err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		f.Fatal(err)
	}
	return b
}

func FuzzStream(f *testing.F) {
	streamSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		next, err := fuzzNext(b)
		if err != nil {
			checkErr(t, err)
			return
		}
		sr, err := OpenStream(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("second open: %v", err)
		}
		sink := &boundSink{size: sr.Capacity()}
		if sr.Capacity() <= fuzzMaxCheck {
			sink.buf = make([]byte, sr.Capacity())
		}
		_, err = CopyStream(context.Background(), sr, sink, CopyOptions{Workers: 2, Align: 4096})
		if err != nil {
			if next != nil {
				t.Fatalf("Next decoded the stream, CopyStream failed: %v", err)
			}
			checkErr(t, err)
			return
		}
		if sink.err != nil {
			t.Fatal(sink.err)
		}
		if next != nil && !bytes.Equal(next, sink.buf) {
			t.Fatal("Next and CopyStream decode differently")
		}
	})
}

// fuzzNext decodes a stream with Next, checking each run. It returns the
// disk when it is small enough to keep.
func fuzzNext(b []byte) ([]byte, error) {
	sr, err := OpenStream(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	var disk []byte
	if sr.Capacity() <= fuzzMaxCheck {
		disk = make([]byte, sr.Capacity())
	}
	end, out := int64(0), 0
	for out < fuzzMaxOut {
		e, data, err := sr.Next(context.Background())
		if errors.Is(err, io.EOF) {
			return disk, nil
		}
		if err != nil {
			return nil, err
		}
		if e.Offset < end || e.Length != int64(len(data)) || e.Length == 0 ||
			e.Offset+e.Length > sr.Capacity() || allZero(data) {
			panic(fmt.Sprintf("run %+v of %d bytes after %d in a disk of %d", e, len(data), end, sr.Capacity()))
		}
		end, out = e.Offset+e.Length, out+len(data)
		if disk != nil {
			copy(disk[e.Offset:], data)
		}
	}
	return nil, nil
}

// boundSink checks that writes stay inside the disk.
type boundSink struct {
	size int64
	buf  []byte
	mu   sync.Mutex
	err  error
}

func (s *boundSink) WriteAt(_ context.Context, p []byte, off int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if off < 0 || off+int64(len(p)) > s.size || len(p) == 0 {
		s.err = fmt.Errorf("write %d bytes at %d of a %d-byte disk", len(p), off, s.size)
		return s.err
	}
	if s.buf != nil {
		copy(s.buf[off:], p)
	}
	return nil
}

func (s *boundSink) Flush(context.Context) error { return nil }

// checkErr insists that errors about the input wrap a sentinel.
func checkErr(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrNotVMDK) && !errors.Is(err, ErrUnsupported) {
		t.Fatalf("error without a sentinel: %v", err)
	}
}

func FuzzSparse(f *testing.F) {
	streamSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := OpenSparse(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			checkErr(t, err)
			return
		}
		ctx := context.Background()
		limit := min(s.Size(), fuzzMaxOut)
		exts, err := s.Extents(ctx, 0, limit)
		if err != nil {
			checkErr(t, err)
			return
		}
		pos := int64(0)
		for _, e := range exts {
			if e.Offset != pos || e.Length <= 0 {
				t.Fatalf("extent %+v at %d", e, pos)
			}
			pos += e.Length
		}
		if pos != limit {
			t.Fatalf("extents end at %d, want %d", pos, limit)
		}
		p := make([]byte, min(limit, 4<<20))
		if err := s.ReadAt(ctx, p, 0); err != nil {
			checkErr(t, err)
		}
		if err := s.ReadAt(ctx, p[:min(len(p), 3000)], s.Size()-int64(min(len(p), 3000))); err != nil {
			checkErr(t, err)
		}
	})
}

func FuzzDescriptor(f *testing.F) {
	f.Add([]byte(esxiDescriptor))
	f.Add([]byte("# Disk DescriptorFile\r\nversion=1\r\nCID=1\r\nparentCID=2\r\ncreateType=\"twoGbMaxExtentFlat\"\r\n" +
		"parentFileNameHint=\"p.vmdk\"\r\nRW 4192256 FLAT \"a b-f001.vmdk\" 0\r\nRDONLY 100 ZERO\r\nNOACCESS 8 VMFSRDM \"r\"\r\n"))
	f.Add([]byte("version=1\ncreateType=\"streamOptimized\"\nRW 8 SPARSE \"x\"\n\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := ParseDescriptor(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrNotVMDK) {
				t.Fatalf("error without a sentinel: %v", err)
			}
			return
		}
		if d.Capacity() < 0 || d.Capacity() > MaxCapacity || d.CreateType == "" {
			t.Fatalf("capacity %d, createType %q", d.Capacity(), d.CreateType)
		}
		for _, e := range d.Extents {
			if e.Sectors < 0 || e.Offset < 0 || (e.File == "" && e.Type != "ZERO") {
				t.Fatalf("extent %+v", e)
			}
		}
		if err := d.Supported(); err != nil && !errors.Is(err, ErrUnsupported) {
			t.Fatalf("Supported: %v", err)
		}
		d.Geometry()
		isDescriptor(b)
	})
}
