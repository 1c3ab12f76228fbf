package cache

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"
)

func TestReclaim(t *testing.T) {
	root := t.TempDir()
	old := time.Now().Add(-48 * time.Hour)
	mkjob := func(job string, mtime time.Time, files ...string) {
		t.Helper()
		dir := filepath.Join(root, job)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			p := filepath.Join(dir, f)
			if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chtimes(p, mtime, mtime); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Chtimes(dir, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	mkjob("old", old, "vda.qcow2", "vda.ckpt")
	mkjob("kept", old, "vda.raw")
	mkjob("recent", time.Now())
	mkjob("old-dir-new-file", old, "vda.qcow2")
	now := time.Now()
	if err := os.Chtimes(filepath.Join(root, "old-dir-new-file", "vda.qcow2"), now, now); err != nil {
		t.Fatal(err)
	}
	// A pid file whose process is not a qemu-nbd (this test) is not acted on.
	mkjob("old-with-pid", old)
	pidFile := filepath.Join(root, "old-with-pid", "vda.pid")
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{pidFile, filepath.Dir(pidFile)} {
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "stray-file"), nil, 0o600); err != nil {
		t.Fatal(err)
	}

	removed, err := Reclaim(root, 24*time.Hour, func(job string) bool { return job == "kept" })
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(removed)
	if want := []string{"old", "old-with-pid"}; !slices.Equal(removed, want) {
		t.Fatalf("removed %v, want %v", removed, want)
	}
	for _, job := range []string{"kept", "recent", "old-dir-new-file", "stray-file"} {
		if _, err := os.Stat(filepath.Join(root, job)); err != nil {
			t.Errorf("%s: %v", job, err)
		}
	}
	if removed, err := Reclaim(filepath.Join(root, "missing"), time.Hour, nil); err != nil || removed != nil {
		t.Errorf("Reclaim of a missing cache path = %v, %v", removed, err)
	}
}

func TestOpenRejects(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		disk string
		size int64
	}{
		{"vda", 0},
		{"vda", 1000},
		{"", 1 << 20},
		{"../vda", 1 << 20},
	} {
		if _, err := Open(context.Background(), dir, tc.disk, tc.size, true, nil); err == nil {
			t.Errorf("Open(%q, %d) succeeded", tc.disk, tc.size)
		} else if tc.disk == "vda" && !errors.Is(err, ErrSize) {
			t.Errorf("Open(%q, %d) = %v, want ErrSize", tc.disk, tc.size, err)
		}
	}
}
