package vcsimtest

import (
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// RawImage writes a sparse raw image of size bytes (a multiple of 1 MiB)
// at dir/name.raw: random data in some MiB, a repeated pattern in others,
// holes in the rest, chosen by seed.
func RawImage(t testing.TB, dir, name string, size int64, seed uint64) string {
	t.Helper()
	p := filepath.Join(dir, name+".raw")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(buf)) {
		switch rng.IntN(3) {
		case 0:
			continue // a hole
		case 1:
			for i := range buf {
				buf[i] = byte(rng.Uint32())
			}
		case 2:
			for i := range buf {
				buf[i] = byte(i % 251)
			}
			buf[0] = byte(off >> 20) // no two alike
		}
		n := min(int64(len(buf)), size-off)
		if _, err := f.WriteAt(buf[:n], off); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// ConvertVMDK converts raw to a VMDK of subformat (streamOptimized,
// monolithicSparse, monolithicFlat) in dir and returns its files, the
// descriptor or sparse file first.
func ConvertVMDK(t testing.TB, raw, dir, name, subformat string) []string {
	t.Helper()
	out := filepath.Join(dir, name+".vmdk")
	cmd := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat="+subformat, raw, out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert to %s: %v: %s", subformat, err, strings.TrimSpace(string(b)))
	}
	files := []string{out}
	if subformat == "monolithicFlat" {
		files = append(files, filepath.Join(dir, name+"-flat.vmdk"))
	}
	return files
}

// Compare runs qemu-img compare on two images of the given formats and
// returns its output and whether they hold the same bytes.
func Compare(t testing.TB, a, aFormat, b, bFormat string) (string, bool) {
	t.Helper()
	out, err := exec.Command("qemu-img", "compare", "-f", aFormat, "-F", bFormat, a, b).CombinedOutput()
	return strings.TrimSpace(string(out)), err == nil
}
