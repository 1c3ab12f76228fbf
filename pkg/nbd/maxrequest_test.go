package nbd

import (
	"bytes"
	"testing"
)

// TestMaxRequest: the request size is DefaultMaxRequest unless asked,
// the server's maximum when asked for a negative size, never above the
// server's maximum nor below its minimum, and a multiple of the minimum.
func TestMaxRequest(t *testing.T) {
	qemu := BlockSize{Min: 1, Preferred: 4096, Max: 32 << 20}
	for _, tc := range []struct {
		name string
		want int
		bs   BlockSize
		got  uint32
	}{
		{"default", 0, qemu, 256 << 10},
		{"asked", 2 << 20, qemu, 2 << 20},
		{"server maximum", -1, qemu, 32 << 20},
		{"above the server maximum", 64 << 20, qemu, 32 << 20},
		{"default above a small server maximum", 0, BlockSize{Min: 512, Preferred: 4096, Max: 64 << 10}, 64 << 10},
		{"rounded down to the minimum", 100000, BlockSize{Min: 4096, Preferred: 4096, Max: 32 << 20}, 98304},
		{"below the minimum", 1000, BlockSize{Min: 4096, Preferred: 4096, Max: 32 << 20}, 4096},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := maxRequest(tc.want, tc.bs); got != tc.got {
				t.Fatalf("maxRequest(%d, %+v) = %d, want %d", tc.want, tc.bs, got, tc.got)
			}
		})
	}
}

// TestMaxWriteRequest: MaxWriteRequest sizes writes alone, with
// MaxRequest's rules, and reads keep MaxRequest; data written in the
// larger requests reads back whole.
func TestMaxWriteRequest(t *testing.T) {
	const size = 8 * MiB
	srv := qemuNBD(t, newImage(t, "raw", size), "-f", "raw")
	for _, tc := range []struct {
		name             string
		opts             Options
		maxRead, maxWrit uint32
	}{
		{"unset", Options{}, DefaultMaxRequest, DefaultMaxRequest},
		{"writes larger", Options{MaxWriteRequest: 2 * MiB}, DefaultMaxRequest, 2 * MiB},
		{"both asked", Options{MaxRequest: 64 * KiB, MaxWriteRequest: 1 * MiB}, 64 * KiB, 1 * MiB},
		{"server maximum", Options{MaxWriteRequest: -1}, DefaultMaxRequest, 32 * MiB},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, srv.sock, tc.opts)
			if c.maxRead != tc.maxRead || c.maxWrite != tc.maxWrit {
				t.Fatalf("requests of %d to read, %d to write; want %d and %d", c.maxRead, c.maxWrite, tc.maxRead, tc.maxWrit)
			}
			ctx := testCtx(t)
			want := pattern(MiB, 3*MiB)
			if err := c.WriteAt(ctx, want, MiB, false); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(want))
			if err := c.ReadAt(ctx, got, MiB); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatal("read back differs from what was written")
			}
		})
	}
}
