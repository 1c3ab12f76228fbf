package vmdk

import (
	"bytes"
	"compress/zlib"
	"errors"
	"hash/adler32"
	"math/rand/v2"
	"testing"
)

func TestAdler32(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	b := make([]byte, 200000)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	for _, n := range []int{0, 1, 7, 8, 9, 5551, 5552, 5553, 11104, 65536, 200000} {
		if got, want := adlerSum(b[:n]), adler32.Checksum(b[:n]); got != want {
			t.Fatalf("%d random bytes: %08x, want %08x", n, got, want)
		}
		ff := bytes.Repeat([]byte{0xff}, n) // the largest sums
		if got, want := adlerSum(ff), adler32.Checksum(ff); got != want {
			t.Fatalf("%d bytes of ff: %08x, want %08x", n, got, want)
		}
	}
}

func FuzzAdler32(f *testing.F) {
	f.Add([]byte("Wikipedia"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if got, want := adlerSum(b), adler32.Checksum(b); got != want {
			t.Fatalf("%08x, want %08x", got, want)
		}
	})
}

func TestInflate(t *testing.T) {
	grain := bytes.Repeat([]byte("grain data "), 6000)[:65536]
	z := compress(grain, false)
	var in inflater
	dst := make([]byte, len(grain))
	if n, err := in.inflate(dst, z); err != nil || n != len(grain) || !bytes.Equal(dst, grain) {
		t.Fatalf("zlib: %d, %v", n, err)
	}
	if n, err := in.inflate(dst, compress(grain, true)); err != nil || n != len(grain) {
		t.Fatalf("deflate: %d, %v", n, err)
	}
	bad := bytes.Clone(z)
	bad[len(bad)-1] ^= 1
	if _, err := in.inflate(dst, bad); !errors.Is(err, errChecksum) {
		t.Fatalf("bad checksum: %v", err)
	}
	if _, err := in.inflate(dst[:1000], z); !errors.Is(err, errGrainTooLong) {
		t.Fatalf("too long: %v", err)
	}
	if _, err := in.inflate(dst, z[:len(z)-2]); err == nil {
		t.Fatal("cut checksum accepted")
	}
	var dict bytes.Buffer
	w, _ := zlib.NewWriterLevelDict(&dict, 1, []byte("grain"))
	w.Write(grain)
	w.Close()
	if _, err := in.inflate(dst, dict.Bytes()); !errors.Is(err, errDictionary) {
		t.Fatalf("dictionary: %v", err)
	}
}
