package testenv

import (
	"path/filepath"
	"strings"
	"testing"
)

// The initramfs lists the virtio modules with their dependencies first.
func TestModuleOrder(t *testing.T) {
	dirs, _ := filepath.Glob("/lib/modules/*/modules.dep")
	if len(dirs) == 0 {
		t.Skip("no kernel modules installed")
	}
	dir := filepath.Dir(dirs[0])
	mods, err := moduleOrder(dir, guestModules)
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, m := range mods {
		pos[strings.TrimSuffix(filepath.Base(m), ".ko")] = i
	}
	for _, pair := range [][2]string{{"virtio", "virtio_pci"}, {"virtio_ring", "virtio_net"}, {"failover", "net_failover"}, {"net_failover", "virtio_net"}, {"virtio", "virtio_console"}} {
		a, okA := pos[pair[0]]
		b, okB := pos[pair[1]]
		if okA && okB && a > b {
			t.Errorf("%s loads after %s: %v", pair[0], pair[1], mods)
		}
	}
}
