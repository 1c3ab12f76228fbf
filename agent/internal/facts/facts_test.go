package facts

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestParsers(t *testing.T) {
	meminfo := []byte("MemTotal:       16318712 kB\nMemFree:  1 kB\nMemAvailable:    8123456 kB\n")
	if got := meminfoBytes(meminfo, "MemTotal:"); got != 16318712*1024 {
		t.Errorf("MemTotal = %d", got)
	}
	if got := meminfoBytes(meminfo, "MemAvailable:"); got != 8123456*1024 {
		t.Errorf("MemAvailable = %d", got)
	}
	if got := meminfoBytes([]byte("MemTotal: 1 kB\n"), "MemAvailable:"); got != 0 {
		t.Errorf("missing MemAvailable = %d", got)
	}
	if got := lastField([]byte("libvirtd (libvirt) 9.0.0\n")); got != "9.0.0" {
		t.Errorf("libvirt version = %q", got)
	}
	if got := qemuVersion([]byte("QEMU emulator version 7.2.11 (Debian 1:7.2+dfsg-7+deb12u7)\nCopyright\n")); got != "7.2.11" {
		t.Errorf("qemu version = %q", got)
	}
	if got := countLines([]byte("vm1\nvm2\n\n")); got != 2 {
		t.Errorf("countLines = %d", got)
	}
	domstats := "Domain: 'a'\n  vcpu.current=2\n  vcpu.maximum=4\n  vcpu.0.state=1\n\nDomain: 'b'\n  vcpu.current=1\n  vcpu.maximum=1\n\n"
	if got := runningVcpus([]byte(domstats)); got != 3 {
		t.Errorf("runningVcpus = %d, want 3 (current, not maximum)", got)
	}
}

func TestCollectMeasuresCacheDisk(t *testing.T) {
	dir := t.TempDir()
	meminfo := filepath.Join(dir, "meminfo")
	if err := os.WriteFile(meminfo, []byte("MemTotal: 1024 kB\nMemAvailable: 512 kB\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := New(filepath.Join(dir, "not", "yet", "created"), nil)
	c.meminfo = meminfo
	f := c.Collect(context.Background())
	if f.GetCpus() < 1 || f.GetMemoryBytes() != 1<<20 || f.GetMemoryAvailableBytes() != 512<<10 {
		t.Errorf("cpus %d, memory %d, available %d", f.GetCpus(), f.GetMemoryBytes(), f.GetMemoryAvailableBytes())
	}
	if f.GetCacheTotalBytes() <= 0 || f.GetCacheFreeBytes() <= 0 || f.GetCacheFreeBytes() > f.GetCacheTotalBytes() {
		t.Errorf("cache total %d free %d", f.GetCacheTotalBytes(), f.GetCacheFreeBytes())
	}
}

// TestCollectMeasuresStoragePaths checks the storage facts against statfs
// of the same file systems: a path that exists, one not made yet (its
// parent's file system) and a duplicate reported once.
func TestCollectMeasuresStoragePaths(t *testing.T) {
	dir := t.TempDir()
	later := filepath.Join(dir, "later", "disks")
	c := New("", nil)
	if !c.SetStoragePaths([]string{dir, later, dir}) {
		t.Fatal("SetStoragePaths: first paths reported unchanged")
	}
	if c.SetStoragePaths([]string{later, dir}) {
		t.Error("SetStoragePaths: the same paths in another order reported changed")
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	wantTotal := int64(st.Blocks) * st.Bsize
	f := c.Collect(context.Background())
	if len(f.GetStorages()) != 2 {
		t.Fatalf("storages = %v, want %s and %s", f.GetStorages(), dir, later)
	}
	for _, s := range f.GetStorages() {
		if s.GetPath() != dir && s.GetPath() != later {
			t.Errorf("storage path %q, want %s or %s", s.GetPath(), dir, later)
		}
		// Free space moves with other writers; the total does not.
		if s.GetTotalBytes() != wantTotal || s.GetFreeBytes() <= 0 || s.GetFreeBytes() > s.GetTotalBytes() {
			t.Errorf("%s: total %d (statfs %d), free %d", s.GetPath(), s.GetTotalBytes(), wantTotal, s.GetFreeBytes())
		}
	}
	c.SetStoragePaths(nil)
	if got := c.Collect(context.Background()).GetStorages(); len(got) != 0 {
		t.Errorf("storages after clearing the paths = %v", got)
	}
}
