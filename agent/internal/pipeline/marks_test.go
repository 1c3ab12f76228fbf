package pipeline

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// ReadMarks sees the done marks a copy saved, without touching the
// checkpoint or its checksums, and tells a missing file from a damaged one.
func TestReadMarks(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "vda.ckpt")
	if _, err := ReadMarks(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("ReadMarks of no file = %v, want fs.ErrNotExist", err)
	}
	src := layout(10*mib, 1, span{0, 3 * mib}, span{8 * mib, 9 * mib})
	cp, err := LoadCheckpoint(path, src.Size(), 2*mib)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Copy(context.Background(), src, newMemSink(src.Size()), Options{Checkpoint: cp, ChunkSize: 2 << 20}); err != nil {
		t.Fatal(err)
	}
	sums, err := os.ReadFile(path + ".sums")
	if err != nil {
		t.Fatal(err)
	}
	m, err := ReadMarks(path)
	if err != nil {
		t.Fatal(err)
	}
	if m.Size != 10*mib || m.ChunkSize != 2*mib || m.Chunks() != 5 || !m.Complete() || !m.Done(4) || m.Done(5) || m.Done(-1) {
		t.Fatalf("marks %+v: want 5 chunks of 2 MiB, all done", m)
	}
	if after, _ := os.ReadFile(path + ".sums"); string(after) != string(sums) {
		t.Fatal("ReadMarks changed the checksums file")
	}
	b, _ := os.ReadFile(path)
	b[len(b)-5] ^= 1
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadMarks(path); !errors.Is(err, ErrCheckpoint) {
		t.Fatalf("ReadMarks of a damaged file = %v, want ErrCheckpoint", err)
	}
}
