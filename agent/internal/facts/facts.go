// Package facts gathers what an agent tells the coordinator about its host:
// CPUs, memory (total and available), running VMs and their vCPUs, libvirt and QEMU
// versions, network interfaces, the size and free space of the --cache-path
// disk (for display) and of the paths the coordinator names: the primary
// storage paths and the cache_path of the migration servers on this host,
// which the scheduler's cache admission reads; and the DHCP host entries
// of its libvirt networks, which address allocation skips. A fact that
// cannot be read is left empty; gathering never fails as a whole.
package facts

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// commandTimeout bounds each external command.
const commandTimeout = 5 * time.Second

// Collector gathers facts.
type Collector struct {
	cachePath string
	meminfo   string
	log       *slog.Logger

	mu           sync.Mutex
	storagePaths []string
}

// New returns a collector measuring the cache disk that holds cachePath
// (no cache facts when it is empty).
func New(cachePath string, log *slog.Logger) *Collector {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Collector{cachePath: cachePath, meminfo: "/proc/meminfo", log: log.With("component", "facts")}
}

// Collect gathers the facts now.
func (c *Collector) Collect(ctx context.Context) *ferryv1.HostFacts {
	f := &ferryv1.HostFacts{Cpus: int32(runtime.NumCPU())}
	if b, err := os.ReadFile(c.meminfo); err == nil {
		f.MemoryBytes = meminfoBytes(b, "MemTotal:")
		f.MemoryAvailableBytes = meminfoBytes(b, "MemAvailable:")
	} else {
		c.log.Debug("read meminfo", "err", err)
	}
	if out, err := c.command(ctx, "virsh", "-c", "qemu:///system", "list", "--name"); err == nil {
		f.RunningVms = int32(countLines(out))
	}
	if out, err := c.command(ctx, "virsh", "-c", "qemu:///system", "domstats", "--list-running", "--vcpu"); err == nil {
		f.RunningVcpus = runningVcpus(out)
	}
	if out, err := c.command(ctx, "libvirtd", "--version"); err == nil {
		f.LibvirtVersion = lastField(out)
	}
	if out, err := c.command(ctx, "qemu-system-x86_64", "--version"); err == nil {
		f.QemuVersion = qemuVersion(out)
	}
	f.Interfaces = interfaces(c.log)
	f.LibvirtNetworks = c.libvirtNetworks(ctx)
	if c.cachePath != "" {
		total, free, err := diskSpace(c.cachePath)
		if err != nil {
			c.log.Warn("measure cache disk", "path", c.cachePath, "err", err)
		}
		f.CacheTotalBytes, f.CacheFreeBytes = total, free
	}
	f.Storages = c.Storages()
	return f
}

// SetStoragePaths sets the paths to measure (primary storage paths and
// migration server cache paths), and says whether they changed.
func (c *Collector) SetStoragePaths(paths []string) bool {
	paths = slices.Clone(paths)
	slices.Sort(paths)
	paths = slices.Compact(paths)
	c.mu.Lock()
	defer c.mu.Unlock()
	if slices.Equal(paths, c.storagePaths) {
		return false
	}
	c.storagePaths = paths
	return true
}

// Storages measures each storage path's file system (its nearest existing
// parent's when the path is not there yet); one that cannot be measured
// is left out.
func (c *Collector) Storages() []*ferryv1.StorageSpace {
	c.mu.Lock()
	paths := c.storagePaths
	c.mu.Unlock()
	var out []*ferryv1.StorageSpace
	for _, p := range paths {
		total, free, err := diskSpace(p)
		if err != nil {
			c.log.Warn("measure primary storage", "path", p, "err", err)
			continue
		}
		out = append(out, &ferryv1.StorageSpace{Path: p, TotalBytes: total, FreeBytes: free})
	}
	return out
}

// command runs a program if it is installed.
func (c *Collector) command(ctx context.Context, name string, args ...string) ([]byte, error) {
	path, err := exec.LookPath(name)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, commandTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, args...).Output()
	if err != nil {
		c.log.Debug("fact command failed", "command", name, "err", err)
	}
	return out, err
}

// meminfoBytes reads a field of /proc/meminfo ("MemTotal:", in kB) in
// bytes; 0 when it is not there.
func meminfoBytes(meminfo []byte, key string) int64 {
	sc := bufio.NewScanner(bytes.NewReader(meminfo))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == key {
			kb, err := strconv.ParseInt(fields[1], 10, 64)
			if err == nil {
				return kb * 1024
			}
		}
	}
	return 0
}

func countLines(out []byte) int {
	n := 0
	for _, l := range strings.Split(string(out), "\n") {
		if strings.TrimSpace(l) != "" {
			n++
		}
	}
	return n
}

// runningVcpus adds up the vcpu.current lines of "virsh domstats --vcpu".
func runningVcpus(out []byte) int32 {
	var n int32
	for _, l := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "vcpu.current="); ok {
			if i, err := strconv.Atoi(v); err == nil {
				n += int32(i)
			}
		}
	}
	return n
}

// lastField is the version in "libvirtd (libvirt) 9.0.0".
func lastField(out []byte) string {
	first, _, _ := strings.Cut(string(out), "\n")
	fields := strings.Fields(first)
	if len(fields) == 0 {
		return ""
	}
	return fields[len(fields)-1]
}

// qemuVersion is the version in "QEMU emulator version 7.2.11 (Debian …)".
func qemuVersion(out []byte) string {
	first, _, _ := strings.Cut(string(out), "\n")
	fields := strings.Fields(first)
	for i, f := range fields {
		if f == "version" && i+1 < len(fields) {
			return fields[i+1]
		}
	}
	return ""
}

// interfaces lists the host's network interfaces but loopback, with their
// addresses in CIDR form.
func interfaces(log *slog.Logger) []*ferryv1.NetworkInterface {
	ifs, err := net.Interfaces()
	if err != nil {
		log.Debug("list interfaces", "err", err)
		return nil
	}
	var out []*ferryv1.NetworkInterface
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		ni := &ferryv1.NetworkInterface{Name: ifc.Name}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			ni.Addresses = append(ni.Addresses, a.String())
		}
		out = append(out, ni)
	}
	return out
}

// diskSpace measures the file system holding path, or its nearest
// existing parent when path does not exist yet.
func diskSpace(path string) (total, free int64, err error) {
	p := filepath.Clean(path)
	for {
		var st syscall.Statfs_t
		err = syscall.Statfs(p, &st)
		if err == nil {
			return int64(st.Blocks) * st.Bsize, int64(st.Bavail) * st.Bsize, nil
		}
		parent := filepath.Dir(p)
		if !errors.Is(err, syscall.ENOENT) || parent == p {
			return 0, 0, err
		}
		p = parent
	}
}
