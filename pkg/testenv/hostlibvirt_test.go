//go:build integration

package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// TestHostLibvirt: a host's libvirtd in a network namespace of its own
// starts a TCG domain from the host's storage (a directory bind-mounted
// over a path under /var/lib/libvirt that the machine's libvirtd does not
// see); a program of the host sees the same storage and reaches the same
// libvirtd as qemu:///system; the machine's libvirtd has no such domain.
// When the test ends the daemon, its QEMU and its directory are gone.
func TestHostLibvirt(t *testing.T) {
	main := RequireLibvirt(t)
	id := randomHex(3)
	var pid int
	var dir string
	t.Run("host", func(t *testing.T) {
		ns := NewNetNS(t, "hl-"+id)
		store := t.TempDir()
		path := filepath.Join(ImagesDir, "ferry-hl-"+id)
		t.Cleanup(func() { os.Remove(path) }) // the mount point the host's programs made
		h := StartHostLibvirt(t, "h"+id, HostLibvirtOptions{NetNS: ns, Binds: [][2]string{{store, path}}})
		dir = h.Dir
		b, err := os.ReadFile(filepath.Join(h.Dir, "libvirtd.pid"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := fmt.Sscan(string(b), &pid); err != nil {
			t.Fatal(err)
		}
		Run(t, "qemu-img", "create", "-q", "-f", "qcow2", filepath.Join(store, "d.qcow2"), "16M")
		name := "ferry-hl-" + id
		xml := fmt.Sprintf(`<domain type='qemu'><name>%s</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os><devices><disk type='file' device='disk'>
<driver name='qemu' type='qcow2'/><source file='%s/d.qcow2'/><target dev='vda' bus='virtio'/></disk></devices></domain>`, name, path)
		file := filepath.Join(t.TempDir(), "dom.xml")
		if err := os.WriteFile(file, []byte(xml), 0o644); err != nil {
			t.Fatal(err)
		}
		h.Virsh(t, "define", file)
		h.Virsh(t, "start", name)
		if got := h.Domains(t, true); !slices.Contains(got, name) {
			t.Errorf("running on the host's libvirtd: %v, want %s", got, name)
		}
		if slices.Contains(main.Domains(t, false), name) {
			t.Errorf("the machine's libvirtd has %s too", name)
		}
		if _, err := os.Stat(path); err == nil {
			if ents, _ := os.ReadDir(path); len(ents) > 0 {
				t.Errorf("the machine sees the host's storage at %s", path)
			}
		}
		// A program of the host: the same storage, the same libvirtd.
		cmd := h.Command("sh", "-c", `ls "$0" && virsh -q -c qemu:///system list --name`, path)
		out := Run(t, cmd[0], cmd[1:]...)
		if !strings.Contains(out, "d.qcow2") || !strings.Contains(out, name) {
			t.Errorf("a program of the host sees %q; want d.qcow2 and the domain %s", out, name)
		}
	})
	if pid == 0 {
		t.Fatal("no daemon")
	}
	if err := syscall.Kill(pid, 0); err == nil {
		t.Errorf("the host's libvirtd (pid %d) outlived its test", pid)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s outlived its test: %v", dir, err)
	}
	if out, err := main.TryVirsh("version"); err != nil {
		t.Errorf("the machine's libvirtd stopped answering: %v %s", err, out)
	}
}
