//go:build integration

package kvm

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/ferry-v2v/ferry/pkg/testenv"
)

// TestInventoryBesideBackups: a second connection (another agent, or this
// one's inventory) describes a running VM over and over while backups of
// it begin and end. Sizing its disks through QEMU (query-named-block-nodes)
// crashed QEMU 7.2 within 14 to 24 backups begun that way; the VM must
// still run after 50, and the sizes stay right throughout.
func TestInventoryBesideBackups(t *testing.T) {
	e := newEnv(t, testenv.VMOptions{})
	c := connect(t, e.keyConfig(t))
	lister := connect(t, e.keyConfig(t))
	ctx := context.Background()
	done := make(chan struct{})
	stopped := make(chan struct{})
	var described atomic.Int64
	var wrong atomic.Value
	go func() {
		defer close(stopped)
		for {
			select {
			case <-done:
				return
			default:
			}
			vm, err := lister.DescribeVM(ctx, e.vm.Name)
			if err != nil {
				continue // the VM, or its backup, in between
			}
			described.Add(1)
			for i, d := range vm.Disks {
				if d.CapacityBytes != e.vm.Disks[i].Size || d.AllocationBytes <= 0 {
					wrong.Store(d)
				}
			}
		}
	}()
	for i := range 50 {
		b, err := c.StartBackup(ctx, e.vm.Name, nil, BackupOptions{})
		if err != nil {
			close(done)
			<-stopped
			t.Fatalf("backup %d: %v (the VM is %s)", i+1, err, e.vm.State(t))
		}
		if err := b.Close(ctx); err != nil {
			t.Fatalf("end backup %d: %v", i+1, err)
		}
	}
	close(done)
	<-stopped
	if s := e.vm.State(t); s != "running" {
		t.Fatalf("the VM is %s after 50 backups beside its inventory; want running", s)
	}
	if d := wrong.Load(); d != nil {
		t.Errorf("a description beside a backup sized a disk %+v; want the image's size", d)
	}
	if described.Load() < 50 {
		t.Errorf("described %d times beside 50 backups; want at least 50", described.Load())
	}
	t.Logf("described %d times beside 50 backups", described.Load())
}
