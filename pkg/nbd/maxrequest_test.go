package nbd

import "testing"

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
