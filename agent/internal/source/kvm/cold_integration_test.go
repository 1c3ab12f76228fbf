//go:build integration

package kvm

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/pkg/nbd"
	"github.com/ferry-v2v/ferry/pkg/testenv"
	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// TestColdExport serves a shut-off VM's disks (the root one on a backing
// file) and reads them over SSH; a dropped SSH connection stops its
// qemu-nbd servers and Reattach serves them again on a new one, the janitor removes a socket a crash left with its
// record, and a VM that is started is reported as such.
func TestColdExport(t *testing.T) {
	e := newEnv(t, testenv.VMOptions{Stopped: true, Backing: true})
	cfg := e.keyConfig(t)
	c := connect(t, cfg)
	vm := findVM(t, c, e.vm.Name)
	if vm.State != StateShutOff || len(vm.Disks) != 2 || vm.Disks[0].CapacityBytes != testenv.RootSize {
		t.Fatalf("ListVMs described the shut-off VM as %+v", vm)
	}
	ctx := context.Background()

	t.Run("read and close", func(t *testing.T) {
		x, err := c.StartColdExport(ctx, vm, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		nc, err := x.OpenDisk(ctx, "vda")
		if err != nil {
			t.Fatal(err)
		}
		cl, err := nbd.NewClient(ctx, nc, nbd.Options{ExportName: "vda"})
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4096)
		if err := cl.ReadAt(ctx, buf, testenv.RootExtents[0].Offset); err != nil || buf[0] != testenv.RootExtents[0].Pattern {
			t.Fatalf("vda at %d = %#x, %v; want %#x from the backing file", testenv.RootExtents[0].Offset, buf[0], err, testenv.RootExtents[0].Pattern)
		}
		cl.Close()
		if err := x.Check(ctx); err != nil {
			t.Fatalf("Check on an unchanged shut-off VM: %v", err)
		}
		if err := x.Close(ctx); err != nil {
			t.Fatal(err)
		}
		expectNoColdServers(t, e.vm)
	})

	t.Run("connection dropped", func(t *testing.T) {
		c2 := connect(t, cfg)
		x, err := c2.StartColdExport(ctx, vm, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if n := len(coldProcs(e.vm)); n != 2 {
			t.Fatalf("%d qemu-nbd serve the export, want 2", n)
		}
		c2.ssh.Close() // as an agent crash or a network failure would
		expectNoColdServers(t, e.vm)
		// A copy that reconnects serves the disks again on the new
		// connection.
		c3 := connect(t, cfg)
		if err := x.Reattach(c3); err != nil {
			t.Fatalf("Reattach: %v", err)
		}
		nc, err := x.OpenDisk(ctx, "vdb")
		if err != nil {
			t.Fatal(err)
		}
		cl, err := nbd.NewClient(ctx, nc, nbd.Options{ExportName: "vdb"})
		if err != nil {
			t.Fatal(err)
		}
		ext := testenv.DataExtents[1]
		buf := make([]byte, 4096)
		if err := cl.ReadAt(ctx, buf, ext.Offset); err != nil || buf[0] != ext.Pattern {
			t.Fatalf("vdb at %d after Reattach = %#x, %v; want %#x", ext.Offset, buf[0], err, ext.Pattern)
		}
		cl.Close()
		if err := x.Close(ctx); err != nil {
			t.Fatal(err)
		}
		expectNoColdServers(t, e.vm)
	})

	t.Run("janitor", func(t *testing.T) {
		dir := t.TempDir()
		d := NewDriver(testkit.Logger(t), nil, Options{StateDir: dir})
		x, err := c.newColdExport(vm, nil)
		if err != nil {
			t.Fatal(err)
		}
		id, err := d.remember(cfg, "127.0.0.0/8", "migrationJobs/cold", x.leftoverOf())
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range x.sockets { // what a crash would leave
			if err := os.WriteFile(s, nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		d.release(id, false)
		if n, err := d.CleanupLeftovers(ctx); n != 1 || err != nil {
			t.Fatalf("CleanupLeftovers = %d, %v; want the cold export's record ended", n, err)
		}
		expectNoColdServers(t, e.vm)
		if m, _ := filepath.Glob(filepath.Join(dir, BackupPrefix+"*.json")); len(m) != 0 {
			t.Errorf("records left: %v", m)
		}
	})

	t.Run("started", func(t *testing.T) {
		x, err := c.StartColdExport(ctx, vm, []string{"vdb"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer x.Close(ctx)
		e.vm.Start(t)
		if err := x.Running(); !errors.Is(err, ErrVMStarted) || !strings.Contains(err.Error(), e.vm.Name) {
			t.Fatalf("Running after the VM started = %v, want ErrVMStarted naming the VM", err)
		}
		if err := x.Check(ctx); !errors.Is(err, ErrVMStarted) {
			t.Fatalf("Check after the VM started = %v, want ErrVMStarted", err)
		}
		if _, err := c.StartColdExport(ctx, vm, nil, nil); !errors.Is(err, ErrVMStarted) {
			t.Fatalf("StartColdExport of a running VM = %v, want ErrVMStarted", err)
		}
	})
}

// coldProcs lists the qemu-nbd processes serving a cold export of vm.
func coldProcs(vm *testenv.TestVM) []string {
	var out []string
	cmdlines, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, f := range cmdlines {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		cmd := strings.ReplaceAll(string(b), "\x00", " ")
		if strings.HasPrefix(cmd, "qemu-nbd ") && strings.Contains(cmd, BackupPrefix+vm.UUID) {
			out = append(out, cmd)
		}
	}
	return out
}

func expectNoColdServers(t *testing.T, vm *testenv.TestVM) {
	t.Helper()
	testkit.WaitFor(t, 30*time.Second, "the cold export's qemu-nbd and sockets to go", func() bool {
		m, _ := filepath.Glob(filepath.Join(DefaultSocketDir, BackupPrefix+vm.UUID+"*"))
		return len(m) == 0 && len(coldProcs(vm)) == 0
	})
}
