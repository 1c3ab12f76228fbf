package vmdk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// dirOpener opens extent files relative to dir, as a descriptor names them.
func dirOpener(dir string) Opener {
	return func(_ context.Context, name string) (io.ReaderAt, int64, error) {
		f, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			return nil, 0, err
		}
		fi, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, 0, err
		}
		return f, fi.Size(), nil
	}
}

func openDisk(t *testing.T, descPath string) *Disk {
	t.Helper()
	b, err := os.ReadFile(descPath)
	if err != nil {
		t.Fatal(err)
	}
	d, err := ParseDescriptor(b)
	if err != nil {
		t.Fatal(err)
	}
	disk, err := OpenDisk(context.Background(), d, dirOpener(filepath.Dir(descPath)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { disk.Close() })
	return disk
}

func TestDiskFromQemu(t *testing.T) {
	const size = 5<<20 + 3*512 + 100
	regions := standardRegions(size)
	img := newTestImage(t, size, regions)
	for _, sub := range []string{"monolithicFlat", "twoGbMaxExtentFlat", "twoGbMaxExtentSparse"} {
		t.Run(sub, func(t *testing.T) {
			path := img.vmdk(t, sub)
			disk := openDisk(t, path)
			if disk.Size() != roundUp(size, SectorSize) || disk.Descriptor().CreateType != sub {
				t.Fatalf("size %d, createType %q", disk.Size(), disk.Descriptor().CreateType)
			}
			out, exts := copyOut(t, disk)
			got, _ := os.ReadFile(out)
			checkEqual(t, got, img.want())
			qemuCompare(t, "vmdk", path, "raw", out)
			checkReads(t, disk, img.want())
			if sub == "twoGbMaxExtentSparse" {
				checkExtents(t, exts, img.want(), DefaultAlign, regions)
			}
		})
	}
}

// TestDiskExtents: flat extents at an offset into their file, a ZERO
// extent and a sparse extent, end to end.
func TestDiskExtents(t *testing.T) {
	const size = 3 << 20
	img := newTestImage(t, size, standardRegions(size)[:2])
	sparse := img.vmdk(t, "monolithicSparse")
	dir := img.dir
	a := make([]byte, 1<<20)
	b := make([]byte, 3<<20)
	for i := range a {
		a[i], b[i] = byte(i%251+1), byte(i%241+1)
	}
	for i := len(a); i < len(b); i++ {
		b[i] = byte(i%239 + 1)
	}
	write := func(name string, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("a flat.raw", a)
	write("b.raw", b)
	write("disk.vmdk", fmt.Appendf(nil, "# Disk DescriptorFile\r\nversion=1\r\nCID=fffffffe\r\n"+
		"parentCID=ffffffff\r\ncreateType=\"custom\"\r\n\r\nRW 2048 FLAT \"a flat.raw\" 0\r\n"+
		"RW 2048 ZERO\r\nRDONLY 2048 FLAT \"b.raw\" 2048\r\nRW %d SPARSE %q\r\n",
		size/SectorSize, filepath.Base(sparse)))
	want := append(append(append(append([]byte{}, a...), make([]byte, 1<<20)...), b[1<<20:2<<20]...), img.want()...)

	disk := openDisk(t, filepath.Join(dir, "disk.vmdk"))
	out, exts := copyOut(t, disk)
	got, _ := os.ReadFile(out)
	checkEqual(t, got, want)
	checkReads(t, disk, want)
	if exts[0] != (Extent{0, 1 << 20, false}) || exts[1] != (Extent{1 << 20, 1 << 20, true}) ||
		exts[2].Offset != 2<<20 || exts[2].Zero {
		t.Fatalf("extents %+v", exts)
	}
}

func TestDiskErrors(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "short.raw"), make([]byte, 1000), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "notsparse.vmdk"), make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		extents string
		want    error
	}{
		"short flat":   {`RW 2048 FLAT "short.raw" 0`, ErrCorrupt},
		"not sparse":   {`RW 8 SPARSE "notsparse.vmdk"`, ErrCorrupt},
		"missing":      {`RW 8 FLAT "missing.raw" 0`, os.ErrNotExist},
		"vmfssparse":   {`RW 8 VMFSSPARSE "delta.vmdk"`, ErrUnsupported},
		"rdm":          {`RW 8 VMFSRDM "rdm.vmdk"`, ErrUnsupported},
		"no extents":   {``, ErrCorrupt},
		"noaccess":     {`NOACCESS 8 FLAT "short.raw" 0`, ErrUnsupported},
		"unknown type": {`RW 8 TAPE "short.raw"`, ErrUnsupported},
	} {
		t.Run(name, func(t *testing.T) {
			d, err := ParseDescriptor([]byte("# Disk DescriptorFile\nversion=1\ncreateType=\"custom\"\n" + c.extents + "\n"))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := OpenDisk(context.Background(), d, dirOpener(dir)); !errors.Is(err, c.want) {
				t.Fatalf("OpenDisk: %v, want %v", err, c.want)
			}
		})
	}
}
