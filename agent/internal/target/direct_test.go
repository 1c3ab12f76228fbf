package target

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// A local volume is created with its metadata preallocated and written
// straight into its file: what the agent writes, punches and reads back
// there is what QEMU reads from the qcow2 image, byte for byte, across
// the 512 MiB runs of its L2 tables, aligned (O_DIRECT) or not (through
// the page cache), and the unwritten rest stays holes.
func TestDirectVolumeIsWhatQEMUReads(t *testing.T) {
	requireTools(t, "qemu-img")
	ctx := context.Background()
	const size = 1280 << 20
	vol, err := NameVolume(storage(ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_LOCAL, t.TempDir(), "", ""), "direct", "vda", size)
	if err != nil {
		t.Fatal(err)
	}
	if err := vol.Create(ctx, ExecCommander{}); err != nil {
		t.Fatal(err)
	}
	v, err := openDirect(ctx, vol.Path)
	if err != nil {
		t.Fatal(err)
	}
	if v.Size() != size || len(v.runs) == 0 {
		t.Fatalf("direct volume of %d bytes in %d runs, want %d bytes", v.Size(), len(v.runs), size)
	}
	// Runs that do not meet in the file, as an image made in clusters of
	// 64 KiB has (one per L2 table, 512 MiB), are written and read
	// across their boundary as the rest.
	if len(v.runs) == 1 {
		r := v.runs[0]
		v.runs = []hostRun{{0, 512 << 20, r.host}, {512 << 20, r.length - 512<<20, r.host + 512<<20}}
	}
	if v.direct == nil {
		t.Log("this file system refused O_DIRECT: every write goes through the page cache")
	}
	raw := filepath.Join(t.TempDir(), "want.raw")
	want, err := os.Create(raw)
	if err != nil {
		t.Fatal(err)
	}
	if err := want.Truncate(size); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	write := func(off int64, n int) {
		t.Helper()
		p := make([]byte, n)
		for i := range p {
			p[i] = byte(rng.UintN(255) + 1)
		}
		if err := v.WriteAt(ctx, p, off); err != nil {
			t.Fatal(err)
		}
		if _, err := want.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
	}
	write(0, 64<<10)
	write(512<<20-100<<10, 300<<10) // across the first run's end
	write(size-64<<10, 64<<10)
	write(900<<20, 2<<20)
	write(5<<20+123, 1000) // unaligned: through the page cache
	write(5<<20, 64<<10)   // over it, aligned: O_DIRECT
	// Zeroes punched into the middle of written data.
	if err := v.WriteZeroes(ctx, 900<<20+512<<10, 1<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := want.WriteAt(make([]byte, 1<<20), 900<<20+512<<10); err != nil {
		t.Fatal(err)
	}
	// Read back what was written, across the run's end.
	got := make([]byte, 300<<10)
	if err := v.ReadAt(ctx, got, 512<<20-100<<10); err != nil {
		t.Fatal(err)
	}
	exp := make([]byte, len(got))
	if _, err := want.ReadAt(exp, 512<<20-100<<10); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, exp) {
		t.Fatal("read back across the runs' boundary differs from what was written")
	}
	// Extents: data where written, zeroes in a hole and where punched.
	for _, tc := range []struct {
		off  int64
		zero bool
	}{{0, false}, {1 << 20, true}, {900 << 20, false}, {900<<20 + 512<<10, true}} {
		exts, err := v.Extents(ctx, tc.off, 64<<10)
		if err != nil {
			t.Fatal(err)
		}
		if len(exts) != 1 || exts[0].Offset != tc.off || exts[0].Length <= 0 || exts[0].Zero != tc.zero {
			t.Errorf("extents at %d: %+v, want one extent from there with zero %v", tc.off, exts, tc.zero)
		}
	}
	if err := v.WriteAt(ctx, []byte{1}, size); err == nil {
		t.Error("a write past the disk's end succeeded")
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if err := want.Close(); err != nil {
		t.Fatal(err)
	}
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "qcow2", raw, vol.Path)
	run(t, "qemu-img", "check", vol.Path)
}

// A qcow2 image created without preallocation has no place in its file
// for unwritten clusters: it is written through qemu-nbd instead.
func TestDirectVolumeNeedsPreallocation(t *testing.T) {
	requireTools(t, "qemu-img")
	img := filepath.Join(t.TempDir(), "plain.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "16M")
	if _, err := openDirect(context.Background(), img); !errors.Is(err, errNotDirect) {
		t.Fatalf("openDirect of an image without preallocation: %v, want %v", err, errNotDirect)
	}
}

// The map must give every byte of the disk a place in the file; runs that
// meet in the file are merged.
func TestParseMap(t *testing.T) {
	for _, tc := range []struct {
		name, json string
		runs       []hostRun
		err        bool
	}{
		{"contiguous", `[{"start":0,"length":4,"depth":0,"present":true,"zero":true,"data":true,"offset":100},
			{"start":4,"length":4,"depth":0,"present":true,"zero":false,"data":true,"offset":104}]`, []hostRun{{0, 8, 100}}, false},
		{"apart", `[{"start":0,"length":4,"depth":0,"present":true,"data":true,"offset":100},
			{"start":4,"length":4,"depth":0,"present":true,"data":true,"offset":300}]`, []hostRun{{0, 4, 100}, {4, 4, 300}}, false},
		{"unallocated", `[{"start":0,"length":4,"depth":0,"present":false,"zero":true,"data":false}]`, nil, true},
		{"compressed", `[{"start":0,"length":4,"depth":0,"present":true,"data":true,"compressed":true,"offset":100}]`, nil, true},
		{"backing file", `[{"start":0,"length":4,"depth":1,"present":true,"data":true,"offset":100}]`, nil, true},
		{"gap", `[{"start":0,"length":4,"depth":0,"present":true,"data":true,"offset":100},
			{"start":8,"length":4,"depth":0,"present":true,"data":true,"offset":108}]`, nil, true},
		{"empty", `[]`, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			runs, _, err := parseMap([]byte(tc.json))
			if tc.err {
				if !errors.Is(err, errNotDirect) {
					t.Fatalf("parseMap = %v, %v; want %v", runs, err, errNotDirect)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(runs, tc.runs) {
				t.Fatalf("parseMap = %v, %v; want %v", runs, err, tc.runs)
			}
		})
	}
}
