package nbd

import (
	"testing"
)

// TestDirtyBitmapContext: with Options.MetaContext naming a qcow2 dirty
// bitmap that qemu-nbd exports (-B), block status reports the extents
// written since the bitmap was added as dirty, and nothing else; reads
// work as usual. A bitmap the server does not export leaves block status
// off instead of reporting base:allocation under its name.
func TestDirtyBitmapContext(t *testing.T) {
	requireTools(t, "qemu-img", "qemu-io", "qemu-nbd")
	img := newImage(t, "qcow2", 16<<20)
	qemuIO(t, "qcow2", img, "write -P 0x11 0 4M") // before the bitmap: clean
	run(t, "qemu-img", "bitmap", "--add", img, "b0")
	qemuIO(t, "qcow2", img, "write -P 0x22 1M 64k", "write -P 0x33 8M 192k")
	srv := qemuNBD(t, img, "-f", "qcow2", "-r", "-e", "2", "-B", "b0")

	c := dial(t, srv.sock, Options{MetaContext: "qemu:dirty-bitmap:b0"})
	if !c.CanBlockStatus() {
		t.Fatal("the dirty bitmap context was not selected")
	}
	exts, err := c.Extents(testCtx(t), 0, c.Size())
	if err != nil {
		t.Fatal(err)
	}
	var dirty []Extent
	for _, e := range exts {
		if e.Dirty() {
			dirty = append(dirty, Extent{Offset: e.Offset, Length: e.Length})
		}
	}
	want := []Extent{{Offset: 1 << 20, Length: 64 << 10}, {Offset: 8 << 20, Length: 192 << 10}}
	if len(dirty) != len(want) || dirty[0].Offset != want[0].Offset || dirty[0].Length != want[0].Length ||
		dirty[1].Offset != want[1].Offset || dirty[1].Length != want[1].Length {
		t.Fatalf("dirty extents = %+v; want %+v", dirty, want)
	}
	p := make([]byte, 4)
	if err := c.ReadAt(testCtx(t), p, 8<<20); err != nil || p[0] != 0x33 {
		t.Fatalf("read = %x, %v", p, err)
	}

	other := dial(t, srv.sock, Options{MetaContext: "qemu:dirty-bitmap:nope"})
	if other.CanBlockStatus() {
		t.Error("block status selected for a bitmap the server does not export")
	}
}
