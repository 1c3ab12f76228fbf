package vmdk

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/ferry-v2v/ferry/pkg/testenv"
)

// source is what the pipeline needs of a disk.
type source interface {
	Size() int64
	Extents(ctx context.Context, off, length int64) ([]Extent, error)
	ReadAt(ctx context.Context, p []byte, off int64) error
}

// copyOut does what the pipeline does with a source: walk its extents,
// read the data ones in chunks and write them to a sparse raw file. It
// returns the file's path and the extents.
func copyOut(t testing.TB, src source) (string, []Extent) {
	t.Helper()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "decoded.raw")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(src.Size()); err != nil {
		t.Fatal(err)
	}
	var all []Extent
	buf := make([]byte, 1<<20+4096)
	for off := int64(0); off < src.Size(); {
		exts, err := src.Extents(ctx, off, 1<<30)
		if err != nil {
			t.Fatal(err)
		}
		if len(exts) == 0 || exts[0].Offset != off {
			t.Fatalf("extents at %d: %+v", off, exts)
		}
		for _, e := range exts {
			all = append(all, e)
			for pos := e.Offset; !e.Zero && pos < e.Offset+e.Length; {
				p := buf[:min(int64(len(buf)), e.Offset+e.Length-pos)]
				if err := src.ReadAt(ctx, p, pos); err != nil {
					t.Fatal(err)
				}
				if _, err := f.WriteAt(p, pos); err != nil {
					t.Fatal(err)
				}
				pos += int64(len(p))
			}
			off = e.Offset + e.Length
		}
	}
	return path, all
}

// checkExtents checks that zero extents read as zeroes, that every grain
// of a data extent holds data (qemu-img allocates no zero grains) and that
// the zero regions written explicitly are reported as zero.
func checkExtents(t testing.TB, exts []Extent, want []byte, grain int64, regions []region) {
	t.Helper()
	for _, e := range exts {
		b := want[e.Offset : e.Offset+e.Length]
		if e.Zero && !allZero(b) {
			t.Fatalf("zero extent %+v holds data", e)
		}
		for g := e.Offset / grain * grain; !e.Zero && g < e.Offset+e.Length; g += grain {
			if allZero(want[g:min(g+grain, int64(len(want)))]) {
				t.Fatalf("data extent %+v holds the zero grain at %d", e, g)
			}
		}
	}
	for _, r := range regions {
		if r.fill != "zero" {
			continue
		}
		for _, e := range exts {
			if !e.Zero && e.Offset < r.off+r.n && r.off < e.Offset+e.Length {
				t.Fatalf("zero region %d+%d reported as data in %+v", r.off, r.n, e)
			}
		}
	}
}

func TestSparse(t *testing.T) {
	const size = 5<<20 + 3*512 + 100
	regions := standardRegions(size)
	img := newTestImage(t, size, regions)
	vmware := filepath.Join(img.dir, "vmware.vmdk")
	if err := os.WriteFile(vmware, makeStream(img.want(), streamSpec{}), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, path := range map[string]string{
		"monolithicSparse": img.vmdk(t, "monolithicSparse"),
		"streamOptimized":  img.vmdk(t, "streamOptimized"),
		"vmwareStream":     vmware,
	} {
		t.Run(name, func(t *testing.T) {
			f := openFile(t, path)
			fi, _ := f.Stat()
			s, err := OpenSparse(f, fi.Size())
			if err != nil {
				t.Fatal(err)
			}
			if s.Size() != roundUp(size, SectorSize) {
				t.Fatalf("size %d", s.Size())
			}
			out, exts := copyOut(t, s)
			got, _ := os.ReadFile(out)
			checkEqual(t, got, img.want())
			checkExtents(t, exts, img.want(), s.Header().GrainBytes(), regions)
			qemuCompare(t, "vmdk", path, "raw", out)
			checkReads(t, s, img.want())
		})
	}
}

// checkReads reads at odd offsets and lengths, across grain boundaries.
func checkReads(t testing.TB, s source, want []byte) {
	t.Helper()
	ctx := context.Background()
	for _, c := range []struct{ off, n int64 }{
		{0, 1}, {65535, 2}, {70000, 200000}, {1<<20 + 700, 6000}, {int64(len(want)) - 5000, 5000},
		{3<<20 - 100, 300<<10 + 200}, {int64(len(want)) - 1, 1},
	} {
		p := make([]byte, c.n)
		if err := s.ReadAt(ctx, p, c.off); err != nil {
			t.Fatalf("read %d+%d: %v", c.off, c.n, err)
		}
		if !bytes.Equal(p, want[c.off:c.off+c.n]) {
			t.Fatalf("read %d+%d differs", c.off, c.n)
		}
	}
	if err := s.ReadAt(ctx, make([]byte, 2), int64(len(want))-1); err == nil {
		t.Fatal("read past the end succeeded")
	}
}

// TestSparseZeroedGrains: grains zeroed with the zeroed-grain flag
// (GTE 1) are zero extents and read as zeroes, through both readers.
func TestSparseZeroedGrains(t *testing.T) {
	const size = 5<<20 + 3*512 + 100
	regions := standardRegions(size)
	img := newTestImage(t, size, regions)
	path := img.vmdk(t, "monolithicSparse", "zeroed_grain=on")
	qemuIO := testenv.LookPath(t, "qemu-io")
	// Zero 256 KiB of the pattern at the start, and the whole random run.
	testenv.Run(t, qemuIO, "-f", "vmdk", "-c", "write -z 0 256k", "-c", "write -z 3M 320k", path)
	want := img.want()
	clear(want[:256<<10])
	clear(want[3<<20 : 3<<20+320<<10])
	zeroed := append(regions, region{0, 256 << 10, "zero"}, region{3 << 20, 320 << 10, "zero"})

	f := openFile(t, path)
	fi, _ := f.Stat()
	s, err := OpenSparse(f, fi.Size())
	if err != nil {
		t.Fatal(err)
	}
	if !s.Header().ZeroedGrains() {
		t.Fatal("zeroed-grain flag not set")
	}
	out, exts := copyOut(t, s)
	got, _ := os.ReadFile(out)
	checkEqual(t, got, want)
	checkExtents(t, exts, want, s.Header().GrainBytes(), zeroed)
	qemuCompare(t, "vmdk", path, "raw", out)

	sr, err := OpenStream(openFile(t, path))
	if err != nil {
		t.Fatal(err)
	}
	got, runs := drain(t, sr)
	checkEqual(t, got, want)
	for _, r := range runs {
		if r.Offset < 256<<10 || (r.Offset < 3<<20+320<<10 && r.Offset+r.Length > 3<<20) {
			t.Fatalf("zeroed grain yielded as data: %+v", r)
		}
	}
}

func TestSparseNotSparse(t *testing.T) {
	for name, c := range map[string]struct {
		b    []byte
		want error
	}{
		"empty":      {nil, ErrNotVMDK},
		"garbage":    {bytes.Repeat([]byte("x"), 1024), ErrNotVMDK},
		"descriptor": {[]byte("# Disk DescriptorFile\nversion=1\n"), ErrUnsupported},
		"cowd":       {append([]byte("COWD"), make([]byte, 1020)...), ErrUnsupported},
		"sesparse":   {append([]byte{0xbe, 0xba, 0xfe, 0xca, 0, 0, 0, 0}, make([]byte, 1016)...), ErrUnsupported},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := OpenSparse(bytes.NewReader(c.b), int64(len(c.b))); !errors.Is(err, c.want) {
				t.Fatalf("OpenSparse: %v, want %v", err, c.want)
			}
			if _, err := OpenStream(bytes.NewReader(c.b)); !errors.Is(err, c.want) && !(len(c.b) < SectorSize && errors.Is(err, ErrNotVMDK)) {
				t.Fatalf("OpenStream: %v, want %v", err, c.want)
			}
		})
	}
}

var _ io.ReaderAt = (*os.File)(nil)
