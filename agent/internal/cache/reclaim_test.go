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
		if err := MakeJobDir(dir); err != nil {
			t.Fatal(err)
		}
		for _, f := range append(files, MarkerFile) {
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
	// An operator's directory under the cache path, days old, that Ferry
	// did not make: never touched.
	backups := filepath.Join(root, "operator-backups")
	if err := os.MkdirAll(filepath.Join(backups, "2026-12-01"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(backups, "2026-12-01", "etc.tar"), []byte("backup"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{filepath.Join(backups, "2026-12-01", "etc.tar"), filepath.Join(backups, "2026-12-01"), backups} {
		if err := os.Chtimes(p, old.Add(-24*time.Hour), old.Add(-24*time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	// A marker that is not a regular file does not count either.
	mkjob("fake-marker", old)
	if err := os.Remove(filepath.Join(root, "fake-marker", MarkerFile)); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/hostname", filepath.Join(root, "fake-marker", MarkerFile)); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(filepath.Join(root, "fake-marker"), old, old); err != nil {
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
	for _, job := range []string{"kept", "recent", "old-dir-new-file", "stray-file", "operator-backups/2026-12-01/etc.tar", "fake-marker"} {
		if _, err := os.Stat(filepath.Join(root, job)); err != nil {
			t.Errorf("%s: %v", job, err)
		}
	}
	if removed, err := Reclaim(filepath.Join(root, "missing"), time.Hour, nil); err != nil || removed != nil {
		t.Errorf("Reclaim of a missing cache path = %v, %v", removed, err)
	}
}

func TestMakeJobDirMarks(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "job-1")
	for range 2 { // again for a restarted job: still marked, no error
		if err := MakeJobDir(dir); err != nil {
			t.Fatal(err)
		}
	}
	fi, err := os.Stat(filepath.Join(dir, MarkerFile))
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
		t.Fatalf("marker: %v, %v", fi, err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o750 {
		t.Fatalf("job directory: %v, %v", fi, err)
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
