package vmdk

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"testing"
)

// decodeStream decodes a whole stream and returns the first error and how
// far it read.
func decodeStream(b []byte) (int64, error) {
	sr, err := OpenStream(bytes.NewReader(b))
	if err != nil {
		return 0, err
	}
	for {
		_, _, err := sr.Next(context.Background())
		if errors.Is(err, io.EOF) {
			return sr.BytesRead(), nil
		}
		if err != nil {
			return sr.BytesRead(), err
		}
	}
}

// decodeSparse opens and reads a whole sparse extent through its extents.
func decodeSparse(b []byte) error {
	s, err := OpenSparse(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		return err
	}
	ctx := context.Background()
	buf := make([]byte, 1<<20)
	for off := int64(0); off < s.Size(); {
		exts, err := s.Extents(ctx, off, s.Size()-off)
		if err != nil {
			return err
		}
		for _, e := range exts {
			for pos := e.Offset; !e.Zero && pos < e.Offset+e.Length; pos += int64(len(buf)) {
				if err := s.ReadAt(ctx, buf[:min(int64(len(buf)), e.Offset+e.Length-pos)], pos); err != nil {
					return err
				}
			}
			off = e.Offset + e.Length
		}
	}
	return nil
}

// TestStreamTruncated: a stream cut anywhere before its last grain (before
// its end-of-stream marker, when it has markers) fails with ErrCorrupt or
// ErrNotVMDK, and never hangs or panics.
func TestStreamTruncated(t *testing.T) {
	const size = 2<<20 + 512
	img := newTestImage(t, size, []region{{0, 70000, "pattern"}, {1 << 20, 100 << 10, "random"}, {size - 600, 600, "pattern"}})
	for name, path := range streams(t, img) {
		t.Run(name, func(t *testing.T) {
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			end, err := decodeStream(b)
			if err != nil {
				t.Fatal(err)
			}
			step := max(end/300, 1)
			for cut := int64(0); cut < end; cut += step + cut%7 {
				if _, err := decodeStream(b[:cut]); !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrNotVMDK) {
					t.Fatalf("cut at %d of %d: %v", cut, end, err)
				}
			}
		})
	}
}

func TestStreamCorrupt(t *testing.T) {
	const size = 1 << 20
	img := newTestImage(t, size, []region{{0, 200 << 10, "pattern"}, {size - 512, 512, "pattern"}})
	good := makeStream(img.want(), streamSpec{})
	h, _ := parseHeader(good, 0)
	first := int64(h.OverHead) * SectorSize // the first grain marker
	le := binary.LittleEndian
	for name, c := range map[string]struct {
		edit func(b []byte)
		want error
	}{
		"magic":          {func(b []byte) { b[0] = 'X' }, ErrNotVMDK},
		"newline bytes":  {func(b []byte) { b[75] = '\n' }, ErrCorrupt},
		"grain size":     {func(b []byte) { le.PutUint64(b[20:], 1<<20) }, ErrCorrupt},
		"version":        {func(b []byte) { le.PutUint32(b[4:], 9) }, ErrUnsupported},
		"compression":    {func(b []byte) { le.PutUint16(b[77:], 2) }, ErrUnsupported},
		"descriptor":     {func(b []byte) { copy(b[512:first], bytes.Repeat([]byte("x"), int(first))) }, ErrCorrupt},
		"parent":         {func(b []byte) { copy(b[512+bytes.Index(b[512:], []byte("parentCID=")):], "parentCID=00000001") }, ErrUnsupported},
		"marker lba":     {func(b []byte) { le.PutUint64(b[first:], 3) }, ErrCorrupt},
		"marker beyond":  {func(b []byte) { le.PutUint64(b[first:], 1<<30) }, ErrCorrupt},
		"marker size":    {func(b []byte) { le.PutUint32(b[first+8:], 1<<30) }, ErrCorrupt},
		"deflate data":   {func(b []byte) { copy(b[first+14:], bytes.Repeat([]byte{0xff}, 40)) }, ErrCorrupt},
		"eos type":       {func(b []byte) { le.PutUint32(b[len(b)-SectorSize+12:], 9) }, ErrCorrupt},
		"footer magic":   {func(b []byte) { b[len(b)-2*SectorSize] = 0 }, ErrCorrupt},
		"footer size":    {func(b []byte) { le.PutUint64(b[len(b)-2*SectorSize+12:], 99) }, ErrCorrupt},
		"grains reorder": {func(b []byte) { le.PutUint64(b[first+SectorSize*((12+int64(le.Uint32(b[first+8:]))+511)/512):], 0) }, ErrUnsupported},
	} {
		t.Run(name, func(t *testing.T) {
			b := bytes.Clone(good)
			c.edit(b)
			if _, err := decodeStream(b); !errors.Is(err, c.want) {
				t.Fatalf("stream: %v, want %v", err, c.want)
			}
		})
	}
}

func TestSparseCorrupt(t *testing.T) {
	const size = 1 << 20
	img := newTestImage(t, size, []region{{0, 200 << 10, "pattern"}, {size - 512, 512, "pattern"}})
	sparse, err := os.ReadFile(img.vmdk(t, "monolithicSparse"))
	if err != nil {
		t.Fatal(err)
	}
	stream := makeStream(img.want(), streamSpec{})
	h, _ := parseHeader(sparse, 0)
	sh, _ := parseHeader(stream, 0)
	le := binary.LittleEndian
	gd := int64(h.GDOffset) * SectorSize
	gt := int64(le.Uint32(sparse[gd:])) * SectorSize
	for name, c := range map[string]struct {
		file []byte
		edit func(b []byte) []byte
		want error
	}{
		"truncated":         {sparse, func(b []byte) []byte { return b[:len(b)-70000] }, ErrCorrupt},
		"gd beyond":         {sparse, func(b []byte) []byte { le.PutUint64(b[56:], 1<<30); return b }, ErrCorrupt},
		"gt beyond":         {sparse, func(b []byte) []byte { le.PutUint32(b[gd:], 1<<30); return b }, ErrCorrupt},
		"grain beyond":      {sparse, func(b []byte) []byte { le.PutUint32(b[gt:], 1<<30); return b }, ErrCorrupt},
		"stream truncated":  {stream, func(b []byte) []byte { return b[:len(b)-100] }, ErrCorrupt},
		"stream no footer":  {stream, func(b []byte) []byte { return append(b, make([]byte, 512)...) }, ErrCorrupt},
		"stream grain data": {stream, func(b []byte) []byte { copy(b[int64(sh.OverHead)*512+14:], bytes.Repeat([]byte{0xee}, 64)); return b }, ErrCorrupt},
	} {
		t.Run(name, func(t *testing.T) {
			if err := decodeSparse(c.edit(bytes.Clone(c.file))); !errors.Is(err, c.want) {
				t.Fatalf("sparse: %v, want %v", err, c.want)
			}
		})
	}
}

// TestStreamTrailer: after the last grain its tables list, a stream with
// markers may hold metadata and an end-of-stream marker, but no grain.
func TestStreamTrailer(t *testing.T) {
	const size = 1 << 20
	img := newTestImage(t, size, []region{{0, 200 << 10, "pattern"}})
	b, err := os.ReadFile(img.vmdk(t, "streamOptimized"))
	if err != nil {
		t.Fatal(err)
	}
	end, err := decodeStream(b)
	if err != nil {
		t.Fatal(err)
	}
	if !allZero(b[end-SectorSize:]) {
		t.Fatalf("qemu-img's stream does not end in zeroes after byte %d", end)
	}
	b = b[:end-SectorSize] // what follows the last grain goes
	grain := make([]byte, SectorSize)
	binary.LittleEndian.PutUint64(grain, 512)
	binary.LittleEndian.PutUint32(grain[8:], 20)
	gt := make([]byte, SectorSize*5)
	binary.LittleEndian.PutUint64(gt, 4)
	binary.LittleEndian.PutUint32(gt[12:], markerGT)
	for name, c := range map[string]struct {
		tail []byte
		want error
	}{
		"nothing":       {nil, nil},
		"end of stream": {make([]byte, SectorSize), nil},
		"grain table":   {append(bytes.Clone(gt), make([]byte, SectorSize)...), nil},
		"stray grain":   {grain, ErrCorrupt},
		"bad marker":    {append(make([]byte, 12), 7, 0, 0, 0), ErrCorrupt},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := decodeStream(append(bytes.Clone(b), c.tail...))
			if !errors.Is(err, c.want) || (err == nil) != (c.want == nil) {
				t.Fatalf("%v, want %v", err, c.want)
			}
		})
	}
}
