package vmdk

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// drain decodes a stream with Next into a buffer of its capacity.
func drain(t testing.TB, sr *StreamReader) ([]byte, []Extent) {
	t.Helper()
	ctx := context.Background()
	got := make([]byte, sr.Capacity())
	var runs []Extent
	end := int64(0)
	for {
		e, data, err := sr.Next(ctx)
		if errors.Is(err, io.EOF) {
			return got, runs
		}
		if err != nil {
			t.Fatal(err)
		}
		if e.Offset < end || e.Length != int64(len(data)) || e.Offset+e.Length > sr.Capacity() {
			t.Fatalf("run %+v of %d bytes after %d, capacity %d", e, len(data), end, sr.Capacity())
		}
		end = e.Offset + e.Length
		copy(got[e.Offset:], data)
		runs = append(runs, e)
	}
}

func TestStreamNext(t *testing.T) {
	const size = 5<<20 + 3*512 + 100
	img := newTestImage(t, size, standardRegions(size))
	for _, sub := range []string{"streamOptimized", "monolithicSparse"} {
		t.Run(sub, func(t *testing.T) {
			sr, err := OpenStream(openFile(t, img.vmdk(t, sub)))
			if err != nil {
				t.Fatal(err)
			}
			got, runs := drain(t, sr)
			checkEqual(t, got, img.want())
			t.Logf("%d runs", len(runs))
		})
	}
}

func TestStreamMarkers(t *testing.T) {
	const size = 5<<20 + 3*512 + 100
	img := newTestImage(t, size, standardRegions(size))
	for name, spec := range map[string]streamSpec{
		"vmware":     {},
		"raw":        {rawDeflate: true, partialLast: true},
		"zerograins": {zeroGrains: true},
		"grain4k":    {grainSectors: 8},
	} {
		t.Run(name, func(t *testing.T) {
			b := makeStream(img.want(), spec)
			path := filepath.Join(t.TempDir(), "vmware.vmdk")
			if err := os.WriteFile(path, b, 0o644); err != nil {
				t.Fatal(err)
			}
			if !spec.rawDeflate { // qemu reads zlib grains only
				qemuCompare(t, "vmdk", path, "raw", img.raw) // the writer is right
			}
			sr, err := OpenStream(bytes.NewReader(b))
			if err != nil {
				t.Fatal(err)
			}
			if !sr.markers {
				t.Fatal("read by its tables, not its markers")
			}
			got, _ := drain(t, sr)
			checkEqual(t, got, img.want())
		})
	}
}
