package facts

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

func TestParsers(t *testing.T) {
	if got := memTotal([]byte("MemTotal:       16318712 kB\nMemFree:  1 kB\n")); got != 16318712*1024 {
		t.Errorf("memTotal = %d", got)
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
}

func TestCollectMeasuresCacheDisk(t *testing.T) {
	dir := t.TempDir()
	meminfo := filepath.Join(dir, "meminfo")
	if err := os.WriteFile(meminfo, []byte("MemTotal: 1024 kB\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := New(filepath.Join(dir, "not", "yet", "created"), nil)
	c.meminfo = meminfo
	f := c.Collect(context.Background())
	if f.GetCpus() < 1 || f.GetMemoryBytes() != 1<<20 {
		t.Errorf("cpus %d, memory %d", f.GetCpus(), f.GetMemoryBytes())
	}
	if f.GetCacheTotalBytes() <= 0 || f.GetCacheFreeBytes() <= 0 || f.GetCacheFreeBytes() > f.GetCacheTotalBytes() {
		t.Errorf("cache total %d free %d", f.GetCacheTotalBytes(), f.GetCacheFreeBytes())
	}
}
