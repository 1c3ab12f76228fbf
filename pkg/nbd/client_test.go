package nbd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"testing"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

const (
	KiB = 1 << 10
	MiB = 1 << 20
)

// pattern returns n bytes as they are at off in a disk whose every 8-byte
// word holds its own offset plus one, so misplaced data is caught.
func pattern(off int64, n int) []byte {
	start := off &^ 7
	b := make([]byte, 0, n+16)
	for o := start; o < off+int64(n); o += 8 {
		b = be.AppendUint64(b, uint64(o)+1)
	}
	return b[off-start : off-start+int64(n)]
}

// writePatternFile writes size bytes of pattern to a new raw file.
func writePatternFile(t testing.TB, size int64) string {
	t.Helper()
	img := newImage(t, "raw", 0)
	if err := os.WriteFile(img, pattern(0, int(size)), 0o644); err != nil {
		t.Fatal(err)
	}
	return img
}

func TestHandshake(t *testing.T) {
	img := newImage(t, "raw", 4*MiB)
	for _, tc := range []struct {
		name       string
		args       []string
		opts       Options
		structured bool
		readOnly   bool
		minBlock   uint32
	}{
		{name: "raw", args: []string{"-f", "raw"}, structured: true, minBlock: 1},
		{name: "read-only", args: []string{"-f", "raw", "-r"}, structured: true, readOnly: true, minBlock: 1},
		{name: "simple replies", args: []string{"-f", "raw"}, opts: Options{DisableStructuredReplies: true}, minBlock: 1},
		{name: "named export", args: []string{"-f", "raw", "-x", "vda"}, opts: Options{ExportName: "vda"}, structured: true, minBlock: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := qemuNBD(t, img, tc.args...)
			c := dial(t, srv.sock, tc.opts)
			if c.Size() != 4*MiB {
				t.Errorf("Size = %d, want %d", c.Size(), 4*MiB)
			}
			if c.StructuredReplies() != tc.structured || c.CanBlockStatus() != tc.structured {
				t.Errorf("structured %v block status %v, want %v", c.StructuredReplies(), c.CanBlockStatus(), tc.structured)
			}
			f := c.Flags()
			if f.ReadOnly() != tc.readOnly || !f.CanFlush() || !f.CanFUA() {
				t.Errorf("flags %#x: read-only %v flush %v fua %v", f, f.ReadOnly(), f.CanFlush(), f.CanFUA())
			}
			if !tc.readOnly && (!f.CanTrim() || !f.CanWriteZeroes() || !f.CanFastZero()) {
				t.Errorf("flags %#x: trim %v zeroes %v fast zero %v", f, f.CanTrim(), f.CanWriteZeroes(), f.CanFastZero())
			}
			if bs := c.BlockSize(); bs.Min != tc.minBlock || bs.Max != 32*MiB {
				t.Errorf("BlockSize = %+v", bs)
			}
		})
	}
}

func TestUnknownExport(t *testing.T) {
	srv := qemuNBD(t, newImage(t, "raw", MiB), "-f", "raw", "-x", "vda")
	ctx := testCtx(t)
	_, err := Dial(ctx, "unix", srv.sock, Options{ExportName: "vdb", Logger: testkit.Logger(t)})
	if !errors.Is(err, ErrUnknownExport) {
		t.Fatalf("Dial(vdb) = %v, want ErrUnknownExport", err)
	}
	var oe *OptionError
	if !errors.As(err, &oe) || oe.Option != optGo {
		t.Errorf("error %v is not an OptionError for NBD_OPT_GO", err)
	}
	t.Logf("error reads: %v", err)
	// The server is unharmed and serves the right name.
	c := dial(t, srv.sock, Options{ExportName: "vda"})
	if c.Size() != MiB {
		t.Errorf("Size = %d", c.Size())
	}
}

func TestExportNameFallback(t *testing.T) {
	// --mask-handshake=0 makes nbdkit speak plain newstyle, so the only way
	// in is NBD_OPT_EXPORT_NAME, and no structured replies.
	srv := nbdkit(t, "--mask-handshake=0", "pattern", "3M")
	c := dial(t, srv.sock, Options{})
	if c.Size() != 3*MiB || c.StructuredReplies() || c.CanBlockStatus() {
		t.Fatalf("size %d structured %v block status %v", c.Size(), c.StructuredReplies(), c.CanBlockStatus())
	}
	got := make([]byte, 64*KiB)
	if err := c.ReadAt(testCtx(t), got, MiB+8); err != nil {
		t.Fatal(err)
	}
	// nbdkit's pattern plugin stores each 8-byte word's offset.
	for i := 0; i < len(got); i += 8 {
		if w := be.Uint64(got[i:]); w != uint64(MiB+8+i) {
			t.Fatalf("word at %d = %d", MiB+8+i, w)
		}
	}
	if _, err := c.BlockStatus(testCtx(t), 0, MiB); !errors.Is(err, ErrUnsupported) {
		t.Errorf("BlockStatus without context = %v, want ErrUnsupported", err)
	}
}

func TestReadQemuIO(t *testing.T) {
	img := newImage(t, "qcow2", 8*MiB)
	qemuIO(t, "qcow2", img, "write -P 0xab 0 1M", "write -P 0xcd 3M 512k")
	want := make([]byte, 8*MiB)
	copy(want, bytes.Repeat([]byte{0xab}, MiB))
	copy(want[3*MiB:], bytes.Repeat([]byte{0xcd}, 512*KiB))
	srv := qemuNBD(t, img, "-f", "qcow2", "-r")
	for _, tc := range []struct {
		name string
		opts Options
	}{{"structured", Options{}}, {"simple", Options{DisableStructuredReplies: true}}} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, srv.sock, tc.opts)
			ctx := testCtx(t)
			got := bytes.Repeat([]byte{0x55}, 8*MiB) // holes must be zeroed
			if err := c.ReadAt(ctx, got, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatal("whole-disk read differs from what qemu-io wrote")
			}
			// Reads straddling data and holes, at odd offsets.
			for _, r := range [][2]int64{{MiB - 500, 1000}, {3*MiB - 1, 512*KiB + 2}, {7 * MiB, MiB}, {0, 1}} {
				p := bytes.Repeat([]byte{0x55}, int(r[1]))
				if err := c.ReadAt(ctx, p, r[0]); err != nil {
					t.Fatalf("ReadAt %d+%d: %v", r[0], r[1], err)
				}
				if !bytes.Equal(p, want[r[0]:r[0]+r[1]]) {
					t.Errorf("ReadAt %d+%d differs", r[0], r[1])
				}
			}
		})
	}
}

func TestWriteThenCompare(t *testing.T) {
	const size = 8 * MiB
	src := writePatternFile(t, size)
	for _, tc := range []struct {
		name string
		dst  string
		args []string
		fmt  string
	}{
		{name: "raw", fmt: "raw"},
		{name: "qcow2", fmt: "qcow2"},
		{name: "zstd qcow2", fmt: "qcow2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var opts []string
			if tc.name == "zstd qcow2" {
				opts = []string{"-o", "compression_type=zstd"}
			}
			dst := newImage(t, tc.fmt, size, opts...)
			args := []string{"-f", tc.fmt, dst}
			if tc.name == "zstd qcow2" { // every write lands compressed
				args = []string{"--image-opts", "driver=compress,file.driver=qcow2,file.file.driver=file,file.file.filename=" + dst}
			}
			srv := qemuNBD(t, "", args...)
			c := dial(t, srv.sock, Options{})
			ctx := testCtx(t)
			data := pattern(0, size)
			// Eight concurrent writers of 1 MiB pieces; one with FUA.
			var wg sync.WaitGroup
			errs := make([]error, 8)
			for i := range 8 {
				wg.Go(func() {
					off := int64(i) * MiB
					errs[i] = c.WriteAt(ctx, data[off:off+MiB], off, i == 3)
				})
			}
			wg.Wait()
			if err := errors.Join(errs...); err != nil {
				t.Fatal(err)
			}
			if err := c.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			if err := c.Disconnect(ctx); err != nil {
				t.Fatal(err)
			}
			srv.stop(t)
			run(t, "qemu-img", "compare", "-f", "raw", "-F", tc.fmt, src, dst)
		})
	}
}

func TestBlockStatusSparse(t *testing.T) {
	img := newImage(t, "qcow2", 64*MiB)
	qemuIO(t, "qcow2", img, "write -P 1 1M 1M", "write -P 2 10M 64k", "write -z 20M 1M", "write -P 3 63M 1M")
	srv := qemuNBD(t, img, "-f", "qcow2", "-r")
	c := dial(t, srv.sock, Options{})
	ctx := testCtx(t)
	exts, err := c.Extents(ctx, 0, c.Size())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("extents: %v", exts)
	var data []Extent
	pos := int64(0)
	for _, e := range exts {
		if e.Offset != pos || e.Length <= 0 {
			t.Fatalf("extent %+v after %d: not contiguous", e, pos)
		}
		pos = e.End()
		if !e.Zero() {
			data = append(data, e)
		} else if e.Flags&^(StateHole|StateZero) != 0 {
			t.Errorf("extent %+v has unknown flags", e)
		}
	}
	if pos != c.Size() {
		t.Fatalf("extents end at %d, want %d", pos, c.Size())
	}
	want := []Extent{{1 * MiB, MiB, 0}, {10 * MiB, 64 * KiB, 0}, {63 * MiB, MiB, 0}}
	if fmt.Sprint(data) != fmt.Sprint(want) {
		t.Errorf("data extents %v, want %v", data, want)
	}
	// One request from an offset inside the data: contiguous from there.
	one, err := c.BlockStatus(ctx, MiB+4*KiB, 4*MiB)
	if err != nil {
		t.Fatal(err)
	}
	if len(one) == 0 || one[0] != (Extent{MiB + 4*KiB, MiB - 4*KiB, 0}) {
		t.Errorf("BlockStatus from inside data = %v", one)
	}
	if end := one[len(one)-1].End(); end > 5*MiB+4*KiB {
		t.Errorf("BlockStatus reaches %d, past the range asked", end)
	}
}

func TestExtentsBeyond4GiB(t *testing.T) {
	// A 6 GiB sparse export needs at least two block status requests.
	srv := nbdkit(t, "memory", "6G")
	c := dial(t, srv.sock, Options{})
	ctx := testCtx(t)
	if err := c.WriteAt(ctx, pattern(0, MiB), 5<<30, false); err != nil {
		t.Fatal(err)
	}
	exts, err := c.Extents(ctx, 0, c.Size())
	if err != nil {
		t.Fatal(err)
	}
	want := []Extent{{0, 5 << 30, StateHole | StateZero}, {5 << 30, MiB, 0}, {5<<30 + MiB, 1<<30 - MiB, StateHole | StateZero}}
	if fmt.Sprint(exts) != fmt.Sprint(want) {
		t.Errorf("extents %v, want %v", exts, want)
	}
}

func TestWriteZeroesTrimFlush(t *testing.T) {
	srv := nbdkit(t, "memory", "16M")
	c := dial(t, srv.sock, Options{})
	if !c.Flags().CanMultiConn() || !c.Flags().CanFastZero() {
		t.Errorf("nbdkit memory flags %#x lack multi-conn or fast zero", c.Flags())
	}
	ctx := testCtx(t)
	ones := bytes.Repeat([]byte{0xff}, 4*MiB)
	if err := c.WriteAt(ctx, ones, 0, false); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name string
		do   func() error
	}{
		{"write-zeroes no-hole", func() error { return c.WriteZeroes(ctx, 512*KiB, 512*KiB, ZeroNoHole) }},
		{"write-zeroes fast fua", func() error { return c.WriteZeroes(ctx, 2*MiB, 64*KiB, ZeroFast|ZeroFUA) }},
		{"trim", func() error { return c.Trim(ctx, 3*MiB, MiB) }},
		{"flush", func() error { return c.Flush(ctx) }},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
	}
	got := make([]byte, 4*MiB)
	if err := c.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(ones)
	clear(want[512*KiB : MiB])
	clear(want[2*MiB : 2*MiB+64*KiB])
	if !bytes.Equal(got[:3*MiB], want[:3*MiB]) {
		t.Error("zeroed ranges do not read back as expected")
	}
	exts, err := c.Extents(ctx, 0, 4*MiB)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("extents after zero and trim: %v", exts)
	if last := exts[len(exts)-1]; last.Offset != 3*MiB || !last.Hole() || !last.Zero() {
		t.Errorf("trimmed range is %+v, want a hole", last)
	}
}

func TestLocalChecks(t *testing.T) {
	srv := qemuNBD(t, newImage(t, "raw", MiB), "-f", "raw", "-r")
	c := dial(t, srv.sock, Options{})
	ctx := testCtx(t)
	for _, tc := range []struct {
		name string
		err  error
		want error
	}{
		{"write read-only", c.WriteAt(ctx, make([]byte, 512), 0, false), ErrReadOnly},
		{"trim read-only", c.Trim(ctx, 0, 512), ErrUnsupported},
		{"read past end", c.ReadAt(ctx, make([]byte, 512), MiB-256), ErrOutOfRange},
		{"negative offset", c.ReadAt(ctx, make([]byte, 1), -1), ErrOutOfRange},
		{"block status past end", func() error { _, err := c.BlockStatus(ctx, MiB, 1); return err }(), ErrOutOfRange},
	} {
		if !errors.Is(tc.err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, tc.err, tc.want)
		}
	}
	if err := c.ReadAt(ctx, nil, MiB); err != nil {
		t.Errorf("empty read at the end: %v", err)
	}
}

func TestUnalignedRejected(t *testing.T) {
	dst := newImage(t, "qcow2", 4*MiB, "-o", "compression_type=zstd")
	srv := qemuNBD(t, "", "--image-opts", "driver=compress,file.driver=qcow2,file.file.driver=file,file.file.filename="+dst)
	c := dial(t, srv.sock, Options{})
	if bs := c.BlockSize(); bs.Min != 64*KiB {
		t.Fatalf("compressing qemu-nbd has block size %+v, want minimum 64 KiB", bs)
	}
	ctx := testCtx(t)
	if err := c.WriteAt(ctx, make([]byte, 4*KiB), 0, false); !errors.Is(err, ErrUnaligned) {
		t.Errorf("4 KiB write = %v, want ErrUnaligned", err)
	}
	if err := c.WriteAt(ctx, pattern(0, 128*KiB), 64*KiB, false); err != nil {
		t.Errorf("aligned write: %v", err)
	}
}

func TestConcurrentReads(t *testing.T) {
	const size = 16 * MiB
	srv := qemuNBD(t, writePatternFile(t, size), "-f", "raw", "-r")
	c := dial(t, srv.sock, Options{MaxInFlight: 16})
	ctx := testCtx(t)
	var wg sync.WaitGroup
	errs := make([]error, 64)
	for i := range 64 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(i), 1))
			for range 8 {
				n := 1 + rng.IntN(512*KiB)
				off := rng.Int64N(size - int64(n))
				p := make([]byte, n)
				if err := c.ReadAt(ctx, p, off); err != nil {
					errs[i] = err
					return
				}
				if !bytes.Equal(p, pattern(off, n)) {
					errs[i] = fmt.Errorf("ReadAt %d+%d returned wrong data", off, n)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	// A read bigger than the server's 32 MiB maximum is split.
	if err := c.ReadAt(ctx, make([]byte, size), 0); err != nil {
		t.Fatal(err)
	}
}

// TestDialTCPThroughProxy reaches qemu-nbd's unix socket through a TCP
// relay, as the agent reaches a source host's socket through SSH.
func TestDialTCPThroughProxy(t *testing.T) {
	img := newImage(t, "raw", 2*MiB)
	qemuIO(t, "raw", img, "write -P 0x5a 1M 64k")
	srv := qemuNBD(t, img, "-f", "raw", "-r")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	t.Cleanup(func() { ln.Close() })
	wg.Go(func() {
		down, err := ln.Accept()
		if err != nil {
			return
		}
		defer down.Close()
		up, err := net.Dial("unix", srv.sock)
		if err != nil {
			t.Error(err)
			return
		}
		defer up.Close()
		wg.Go(func() { _, _ = io.Copy(up, down); up.Close() }) // ends when down closes
		_, _ = io.Copy(down, up)
	})
	ctx := testCtx(t)
	if _, err := Dial(ctx, "udp", ln.Addr().String(), Options{}); err == nil {
		t.Error("Dial over udp succeeded")
	}
	c, err := Dial(ctx, "tcp", ln.Addr().String(), Options{Logger: testkit.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p := make([]byte, 128*KiB)
	if err := c.ReadAt(ctx, p, MiB-64*KiB); err != nil {
		t.Fatal(err)
	}
	want := append(make([]byte, 64*KiB), bytes.Repeat([]byte{0x5a}, 64*KiB)...)
	if !bytes.Equal(p, want) {
		t.Error("read through the relay differs")
	}
}

// TestSplitBatches: calls split into more requests than there are slots,
// many at once, each sent in batches of as many as the slots (one writev
// per batch), neither deadlock nor mix their data; a call whose
// context ends mid-way fails with the context's error and leaves the
// connection usable.
func TestSplitBatches(t *testing.T) {
	const size = 8 * MiB
	srv := qemuNBD(t, newImage(t, "raw", size), "-f", "raw")
	c := dial(t, srv.sock, Options{MaxInFlight: 3, MaxRequest: 64 * KiB})
	ctx := testCtx(t)
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range 8 {
		wg.Go(func() {
			off := int64(i) * MiB
			want := pattern(off, MiB)
			if err := c.WriteAt(ctx, want, off, false); err != nil {
				errs[i] = err
				return
			}
			got := make([]byte, MiB)
			if err := c.ReadAt(ctx, got, off); err != nil {
				errs[i] = err
				return
			}
			if !bytes.Equal(got, want) {
				errs[i] = fmt.Errorf("MiB %d read back differs", i)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := c.ReadAt(cctx, make([]byte, MiB), 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("ReadAt with an ended context: %v, want context.Canceled", err)
	}
	got := make([]byte, size)
	if err := c.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, pattern(0, size)) {
		t.Fatal("the disk read back whole differs from what was written")
	}
}
