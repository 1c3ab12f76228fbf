package target

import (
	"os"
	"path/filepath"
	"testing"
)

// Upload marks come back only for the cache image generation, volume,
// size and chunk size they were saved for, and never from a damaged file.
func TestUploadMarks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vda.upload")
	m := newUploadMarks(path, "gen1", "/v/vda.qcow2", 10<<20+512, 2<<20)
	m.mark([]int{0, 5})
	if err := m.save(); err != nil {
		t.Fatal(err)
	}
	got, ok, err := loadUploadMarks(path, "gen1", "/v/vda.qcow2", 10<<20+512, 2<<20)
	if err != nil || !ok || got.count() != 2 || !got.isDone(0) || !got.isDone(5) || got.chunks() != 6 {
		t.Fatalf("loaded %+v, %v, %v: want chunks 0 and 5 of 6", got, ok, err)
	}
	for _, tc := range []struct {
		name, gen, vol string
		size, chunk    int64
	}{
		{"another image", "gen2", "/v/vda.qcow2", 10<<20 + 512, 2 << 20},
		{"another volume", "gen1", "/w/vda.qcow2", 10<<20 + 512, 2 << 20},
		{"another size", "gen1", "/v/vda.qcow2", 12 << 20, 2 << 20},
		{"another chunk", "gen1", "/v/vda.qcow2", 10<<20 + 512, 256 << 10},
	} {
		got, ok, err := loadUploadMarks(path, tc.gen, tc.vol, tc.size, tc.chunk)
		if err != nil || ok || got.count() != 0 {
			t.Errorf("%s: loaded %d marks, ok %v, err %v; want none", tc.name, got.count(), ok, err)
		}
	}
	b, _ := os.ReadFile(path)
	b[len(b)-6] ^= 0x80
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if got, ok, err := loadUploadMarks(path, "gen1", "/v/vda.qcow2", 10<<20+512, 2<<20); err != nil || ok || got.count() != 0 {
		t.Errorf("damaged file: loaded %d marks, ok %v, err %v; want none", got.count(), ok, err)
	}
}
