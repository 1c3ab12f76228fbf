package testenv

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// A test VM with VMOptions.GuestIP boots: the host's Debian kernel
// (linux-image-amd64, which scripts/deps.sh installs) with a small
// initramfs made here, whose only program is guestinit (built static from
// this module). guestinit loads the virtio modules, gives the NIC the
// address and answers the QEMU guest agent protocol on the VM's
// org.qemu.guest_agent.0 channel, so libvirt's virDomainInterfaceAddresses
// (source agent) reports the address as a real guest agent would.

// guestModules are what guestinit needs beyond what the kernel has built
// in: PCI virtio, the NIC and the console that carries the agent's port.
var guestModules = []string{"virtio_pci", "virtio_net", "virtio_console"}

// guestBoot is a kernel and an initramfs for a booting test VM.
type guestBoot struct {
	Kernel, Initrd string
}

// makeGuestBoot copies the newest /boot/vmlinuz-* into dir and builds the
// initramfs beside it. Without a kernel the test is unavailable.
func makeGuestBoot(t testing.TB, dir string) guestBoot {
	t.Helper()
	kernels, _ := filepath.Glob("/boot/vmlinuz-*")
	if len(kernels) == 0 {
		Unavailable(t, "no kernel in /boot for a booting test VM (scripts/deps.sh installs linux-image-amd64)")
	}
	sort.Strings(kernels)
	kernel := kernels[len(kernels)-1]
	version := strings.TrimPrefix(filepath.Base(kernel), "vmlinuz-")
	b := guestBoot{Kernel: filepath.Join(dir, "vmlinuz"), Initrd: filepath.Join(dir, "initrd.cpio")}
	data, err := os.ReadFile(kernel)
	if err != nil {
		t.Fatalf("read the kernel: %v", err)
	}
	writeFile(t, b.Kernel, data, 0o644)

	init := filepath.Join(t.TempDir(), "init")
	cmd := exec.Command("go", "build", "-trimpath", "-o", init, "github.com/ferry-v2v/ferry/pkg/testenv/guestinit")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build guestinit: %v: %s", err, out)
	}
	modDir := filepath.Join("/lib/modules", version)
	mods, err := moduleOrder(modDir, guestModules)
	if err != nil {
		t.Fatalf("kernel modules of %s: %v", version, err)
	}
	var c cpio
	c.dir("dev")
	c.dir("proc")
	c.dir("sys")
	c.dir("modules")
	c.charDev("dev/console", 5, 1)
	initBytes, err := os.ReadFile(init)
	if err != nil {
		t.Fatal(err)
	}
	c.file("init", 0o755, initBytes)
	var order []string
	for _, m := range mods {
		data, err := os.ReadFile(filepath.Join(modDir, m))
		if err != nil {
			t.Fatalf("read module %s: %v", m, err)
		}
		c.file("modules/"+filepath.Base(m), 0o644, data)
		order = append(order, filepath.Base(m))
	}
	c.file("modules/order", 0o644, []byte(strings.Join(order, "\n")+"\n"))
	writeFile(t, b.Initrd, c.close(), 0o644)
	return b
}

// moduleOrder lists the modules (paths relative to dir) to load for
// wanted, dependencies first, from dir/modules.dep. A module built into
// the kernel is not listed.
func moduleOrder(dir string, wanted []string) ([]string, error) {
	f, err := os.Open(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	deps := map[string][]string{}
	byName := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		mod, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		deps[mod] = strings.Fields(rest)
		name := strings.TrimSuffix(filepath.Base(mod), ".ko")
		byName[strings.ReplaceAll(name, "-", "_")] = mod
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	builtin, _ := os.ReadFile(filepath.Join(dir, "modules.builtin"))
	var out []string
	seen := map[string]bool{}
	var visit func(string)
	visit = func(mod string) {
		if seen[mod] {
			return
		}
		seen[mod] = true
		ds := deps[mod]
		for i := len(ds) - 1; i >= 0; i-- {
			visit(ds[i])
		}
		out = append(out, mod)
	}
	for _, w := range wanted {
		mod, ok := byName[w]
		if !ok {
			if bytes.Contains(builtin, []byte("/"+w+".ko")) {
				continue
			}
			return nil, fmt.Errorf("no module %s (neither in modules.dep nor built in)", w)
		}
		visit(mod)
	}
	return out, nil
}

// cpio writes an initramfs archive in the "newc" format.
type cpio struct {
	buf bytes.Buffer
	ino int
}

func (c *cpio) entry(name string, mode uint32, rdevMajor, rdevMinor int, data []byte) {
	c.ino++
	fmt.Fprintf(&c.buf, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	c.buf.WriteString(name)
	c.buf.WriteByte(0)
	c.pad()
	c.buf.Write(data)
	c.pad()
}

func (c *cpio) pad() {
	for c.buf.Len()%4 != 0 {
		c.buf.WriteByte(0)
	}
}

func (c *cpio) dir(name string) { c.entry(name, 0o040755, 0, 0, nil) }

func (c *cpio) file(name string, perm uint32, data []byte) { c.entry(name, 0o100000|perm, 0, 0, data) }

func (c *cpio) charDev(name string, major, minor int) { c.entry(name, 0o020600, major, minor, nil) }

func (c *cpio) close() []byte {
	c.entry("TRAILER!!!", 0, 0, 0, nil)
	return c.buf.Bytes()
}
