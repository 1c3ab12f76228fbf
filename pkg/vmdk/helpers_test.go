package vmdk

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/ferry-v2v/ferry/pkg/testenv"
)

// region is a run of a test image: data from a pattern, or zeroes written
// explicitly (so the raw file holds them as data, and a VMDK must not).
type region struct {
	off, n int64
	fill   string // "pattern", "random" or "zero"
}

// testImage is a raw image with known contents and the VMDKs made from it.
type testImage struct {
	dir  string
	raw  string
	size int64 // bytes of the raw file
	data []byte
}

// standardRegions hold patterns at several offsets, unaligned ones, a zero
// region written explicitly, holes, incompressible data, and data in the
// disk's last partial grain.
func standardRegions(size int64) []region {
	return []region{
		{0, 100 << 10, "pattern"},
		{1<<20 + 777, 5000, "pattern"},
		{2 << 20, 512 << 10, "zero"},
		{3 << 20, 300 << 10, "random"},
		{4<<20 + 64<<10, 64 << 10, "pattern"},
		{size - 3000, 3000, "pattern"},
	}
}

// newTestImage writes a raw image of size bytes holding regions.
func newTestImage(t testing.TB, size int64, regions []region) *testImage {
	t.Helper()
	dir := t.TempDir()
	img := &testImage{dir: dir, raw: filepath.Join(dir, "disk.raw"), size: size, data: make([]byte, size)}
	rng := rand.New(rand.NewPCG(uint64(size), 7))
	for i, r := range regions {
		b := img.data[r.off : r.off+r.n]
		switch r.fill {
		case "pattern":
			for j := range b {
				b[j] = byte(int64(j)*31/7 + int64(i)*13 + 1)
			}
		case "random":
			for j := range b {
				b[j] = byte(rng.Uint32())
			}
		}
	}
	f, err := os.Create(img.raw)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for _, r := range regions { // zero regions too: they are written, not holes
		if _, err := f.WriteAt(img.data[r.off:r.off+r.n], r.off); err != nil {
			t.Fatal(err)
		}
	}
	return img
}

// vmdk converts the raw image with qemu-img and returns the VMDK's path.
func (img *testImage) vmdk(t testing.TB, subformat string, opts ...string) string {
	t.Helper()
	qemuImg := testenv.LookPath(t, "qemu-img")
	name := subformat + strings.Join(opts, "_") + ".vmdk"
	out := filepath.Join(img.dir, strings.ReplaceAll(name, ",", "_"))
	o := strings.Join(append([]string{"subformat=" + subformat}, opts...), ",")
	testenv.Run(t, qemuImg, "convert", "-f", "raw", "-O", "vmdk", "-o", o, img.raw, out)
	return out
}

// want is the disk the VMDK must decode to: the raw image padded with
// zeroes to whole sectors, as qemu-img rounds its size up.
func (img *testImage) want() []byte {
	n := roundUp(img.size, SectorSize)
	w := make([]byte, n)
	copy(w, img.data)
	return w
}

// qemuCompare runs qemu-img compare on two images.
func qemuCompare(t testing.TB, aFmt, a, bFmt, b string) {
	t.Helper()
	qemuImg := testenv.LookPath(t, "qemu-img")
	cmd := exec.Command(qemuImg, "compare", "-f", aFmt, "-F", bFmt, a, b)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("qemu-img compare %s %s: %v\n%s", a, b, err, out)
	}
}

// checkEqual compares decoded bytes with the expected disk.
func checkEqual(t testing.TB, got, want []byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("decoded %d bytes, want %d", len(got), len(want))
	}
	if !bytes.Equal(got, want) {
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("decoded disk differs from byte %d: %#x, want %#x", i, got[i], want[i])
			}
		}
	}
}

// memSink is a Sink over a byte slice that records the runs written.
type memSink struct {
	mu     sync.Mutex
	buf    []byte
	writes []Extent
	flush  int
}

func (m *memSink) WriteAt(_ context.Context, p []byte, off int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(m.buf[off:], p)
	m.writes = append(m.writes, Extent{Offset: off, Length: int64(len(p))})
	return nil
}

func (m *memSink) Flush(context.Context) error { m.flush++; return nil }

// openFile opens a file for a test and closes it after.
func openFile(t testing.TB, path string) *os.File {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}
