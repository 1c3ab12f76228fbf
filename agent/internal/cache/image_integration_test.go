//go:build integration

package cache

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/pkg/testenv"
)

const (
	kib = int64(1) << 10
	mib = int64(1) << 20
)

func requireQemu(t *testing.T) {
	t.Helper()
	testenv.LookPath(t, "qemu-img")
	testenv.LookPath(t, "qemu-nbd")
}

func openImage(t *testing.T, dir string, size int64, compressed bool) *Image {
	t.Helper()
	img, err := Open(context.Background(), dir, "vda", size, compressed, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = img.Close() })
	return img
}

func pattern(n int64, b byte) []byte { return bytes.Repeat([]byte{b}, int(n)) }

// imageInfo returns qemu-img info's output for path.
func imageInfo(t *testing.T, path string) string {
	return testenv.Run(t, "qemu-img", "info", path)
}

// TestCompressedImage writes a disk whose size is not whole clusters: the
// tail cluster is padded, the closed image has the disk's exact size, its
// clusters are compressed, and a reopened image still holds the data.
func TestCompressedImage(t *testing.T) {
	requireQemu(t)
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "job-1")
	size := 10*mib + 3*512
	img := openImage(t, dir, size, true)
	if img.Format() != FormatQcow2 || img.Path() != filepath.Join(dir, "vda.qcow2") {
		t.Fatalf("format %s, path %s", img.Format(), img.Path())
	}
	want := make([]byte, size)
	write := func(off int64, p []byte) {
		t.Helper()
		if err := img.WriteAt(ctx, p, off); err != nil {
			t.Fatalf("write %d+%d: %v", off, len(p), err)
		}
		copy(want[off:], p)
	}
	write(0, pattern(mib, 0xab))
	write(4*mib, pattern(2*mib, 0xcd))
	tail := size / Granule * Granule
	write(tail, pattern(size-tail, 0xef))
	if err := img.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, size)
	if err := img.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read back: %v (equal %v)", err, bytes.Equal(got, want))
	}
	// A compressed cluster cannot be written twice in place; zeroed first,
	// it can.
	if err := img.WriteAt(ctx, pattern(Granule, 0x11), 0); err == nil {
		t.Error("qcow2 overwrote a compressed cluster in place; the pipeline's zeroing is then needless")
	}
	if err := img.WriteZeroes(ctx, 0, mib); err != nil {
		t.Fatal(err)
	}
	write(0, pattern(Granule, 0x22))
	copy(want[Granule:mib], make([]byte, mib-Granule))
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	info := imageInfo(t, img.Path())
	if !strings.Contains(info, "(10487296 bytes)") || !strings.Contains(info, "compression type: zstd") {
		t.Fatalf("closed image:\n%s", info)
	}
	check := testenv.Run(t, "qemu-img", "check", img.Path())
	if !strings.Contains(check, "compressed clusters") {
		t.Errorf("no compressed clusters:\n%s", check)
	}
	compareRaw(t, img.Path(), want)

	img = openImage(t, dir, size, true)
	if err := img.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("reopened image lost its data: %v", err)
	}
	if err := img.ReadAt(ctx, got[:100], size-100); err != nil {
		t.Fatalf("unaligned read at the end: %v", err)
	}
}

// compareRaw checks with qemu-img compare that image holds want.
func compareRaw(t *testing.T, image string, want []byte) {
	t.Helper()
	ref := filepath.Join(t.TempDir(), "want.raw")
	if err := os.WriteFile(ref, want, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", "qcow2", ref, image).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img compare: %v: %s", err, out)
	}
}

func TestRawImage(t *testing.T) {
	requireQemu(t)
	ctx := context.Background()
	dir := t.TempDir()
	img := openImage(t, dir, 256*mib, false)
	if err := img.WriteAt(ctx, pattern(100*kib, 0x5a), 10*mib+512); err != nil {
		t.Fatal(err)
	}
	if err := img.WriteAt(ctx, pattern(mib, 0x5b), 20*mib); err != nil {
		t.Fatal(err)
	}
	if err := img.WriteZeroes(ctx, 20*mib, mib); err != nil {
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, "vda.raw"))
	if err != nil {
		t.Fatal(err)
	}
	if blocks := fi.Sys().(*syscall.Stat_t).Blocks * 512; fi.Size() != 256*mib || blocks > mib {
		t.Fatalf("raw image of %d bytes uses %d: not sparse", fi.Size(), blocks)
	}
	img = openImage(t, dir, 256*mib, false)
	got := make([]byte, 100*kib)
	if err := img.ReadAt(ctx, got, 10*mib+512); err != nil || !bytes.Equal(got, pattern(100*kib, 0x5a)) {
		t.Fatalf("reopened raw image lost its data: %v", err)
	}
}

// TestNewImageDropsCheckpoint: a checkpoint without its image describes
// data that is gone.
func TestNewImageDropsCheckpoint(t *testing.T) {
	requireQemu(t)
	dir := t.TempDir()
	ckpt := filepath.Join(dir, "vda.ckpt")
	if err := os.WriteFile(ckpt, []byte("stale"), 0o600); err != nil {
		t.Fatal(err)
	}
	img := openImage(t, dir, mib, true)
	if img.CheckpointPath() != ckpt {
		t.Fatalf("CheckpointPath = %s", img.CheckpointPath())
	}
	if _, err := os.Stat(ckpt); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a new image kept an old checkpoint")
	}
}

func TestReopenOtherSize(t *testing.T) {
	requireQemu(t)
	dir := t.TempDir()
	if err := openImage(t, dir, 2*mib, true).Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(context.Background(), dir, "vda", 4*mib, true, nil); !errors.Is(err, ErrSize) {
		t.Fatalf("Open with another size = %v, want ErrSize", err)
	}
}

// TestStaleServer opens an image whose qemu-nbd an earlier agent left
// running: the stale server is stopped and the image served again.
func TestStaleServer(t *testing.T) {
	requireQemu(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "vda.raw")
	if err := createSparse(path, mib); err != nil {
		t.Fatal(err)
	}
	stale := exec.Command("qemu-nbd", "--persistent", "--socket="+filepath.Join(dir, "old.sock"),
		"--image-opts", imageArg(FormatRaw, path))
	if err := stale.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- stale.Wait() }()
	if err := os.WriteFile(filepath.Join(dir, "vda.pid"), []byte(strconv.Itoa(stale.Process.Pid)), 0o600); err != nil {
		t.Fatal(err)
	}
	img := openImage(t, dir, mib, false)
	if err := img.WriteAt(context.Background(), pattern(4096, 1), 0); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Fatal("the stale qemu-nbd still runs")
	}
}

// TestKilledServer: a qemu-nbd killed outright leaves a qcow2 whose lazy
// refcounts are stale; reopening repairs it and keeps every flushed write.
func TestKilledServer(t *testing.T) {
	requireQemu(t)
	ctx := context.Background()
	dir := t.TempDir()
	img := openImage(t, dir, 8*mib, true)
	for i := int64(0); i < 8; i++ {
		if err := img.WriteAt(ctx, pattern(mib, byte(i+1)), i*mib); err != nil {
			t.Fatal(err)
		}
	}
	if err := img.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := img.srv.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-img.srv.exited
	if !strings.Contains(imageInfo(t, img.Path()), "corrupt: false") {
		t.Log("the killed image:\n" + imageInfo(t, img.Path()))
	}
	img = openImage(t, dir, 8*mib, true)
	got := make([]byte, mib)
	for i := int64(0); i < 8; i++ {
		if err := img.ReadAt(ctx, got, i*mib); err != nil || !bytes.Equal(got, pattern(mib, byte(i+1))) {
			t.Fatalf("MiB %d after the kill: %v", i, err)
		}
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	if out := testenv.Run(t, "qemu-img", "check", img.Path()); !strings.Contains(out, "No errors were found") {
		t.Fatalf("qemu-img check after reopening:\n%s", out)
	}
}

// TestReclaimStopsServers: a job directory past retention whose image is
// still served by a qemu-nbd of a dead agent is stopped, then removed.
func TestReclaimStopsServers(t *testing.T) {
	requireQemu(t)
	root := t.TempDir()
	if err := MakeJobDir(filepath.Join(root, "job-1")); err != nil {
		t.Fatal(err)
	}
	img := openImage(t, filepath.Join(root, "job-1"), mib, true)
	old := time.Now().Add(-48 * time.Hour)
	entries, _ := os.ReadDir(filepath.Join(root, "job-1"))
	for _, e := range append(entries, nil) {
		p := filepath.Join(root, "job-1")
		if e != nil {
			p = filepath.Join(p, e.Name())
		}
		if err := os.Chtimes(p, old, old); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
	}
	removed, err := Reclaim(root, 24*time.Hour, nil)
	if err != nil || len(removed) != 1 {
		t.Fatalf("Reclaim = %v, %v", removed, err)
	}
	select {
	case <-img.srv.exited:
	case <-time.After(5 * time.Second):
		t.Fatal("the image's qemu-nbd still runs after its job was reclaimed")
	}
}
