//go:build integration

package kvm

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-v2v/ferry/pkg/testenv"
)

func TestBackup(t *testing.T) {
	e := newEnv(t, testenv.VMOptions{RandomBytes: 2 << 20})
	c := connect(t, e.keyConfig(t))
	ctx := context.Background()

	t.Run("running", func(t *testing.T) { testBackupRunning(t, e, c) })
	t.Run("pause", func(t *testing.T) { testBackupPause(t, e, c) })
	t.Run("cancelled", func(t *testing.T) { testBackupCancelled(t, e, c) })
	t.Run("bad disk", func(t *testing.T) {
		if _, err := c.StartBackup(ctx, e.vm.Name, []string{"vdz"}, BackupOptions{}); err == nil ||
			!strings.Contains(err.Error(), `no disk "vdz"`) {
			t.Errorf("StartBackup(vdz) = %v", err)
		}
		checkNoJob(t, e.vm)
	})
}

// testBackupRunning copies both disks of the running VM, which keeps
// running, reading only data extents.
func testBackupRunning(t *testing.T, e *env, c *Conn) {
	ctx := context.Background()
	b, err := c.StartBackup(ctx, e.vm.Name, nil, BackupOptions{})
	if err != nil {
		t.Fatalf("StartBackup: %v", err)
	}
	if got := strings.Join(b.Targets(), ","); got != "vda,vdb" {
		t.Errorf("targets = %s; want vda,vdb", got)
	}
	if job := e.vm.JobType(t); job != "Unbounded" {
		t.Errorf("job type during the backup = %q; want Unbounded", job)
	}
	for _, p := range append(b.ScratchFiles(), b.Socket()) {
		if !strings.HasPrefix(filepath.Base(p), BackupPrefix+e.vm.UUID+"-") {
			t.Errorf("backup file %s is not named after the VM", p)
		}
		if _, err := os.Stat(p); err != nil {
			t.Errorf("backup file: %v", err)
		}
	}
	for _, d := range e.vm.Disks {
		raw, read := readExport(t, b, d.Target)
		compareDisk(t, raw, d)
		want := written(d.Extents) + int64(len(d.Random))
		if read != want {
			t.Errorf("%s: read %d bytes of data extents; want exactly the %d written", d.Target, read, want)
		}
	}
	if s := e.vm.State(t); s != "running" {
		t.Errorf("VM state during the backup = %q; want running", s)
	}
	if err := b.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	checkGone(t, e.vm, b)
	if err := b.Close(ctx); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if s := e.vm.State(t); s != "running" {
		t.Errorf("VM state after the backup = %q; want running", s)
	}
}

// testBackupPause pauses the VM first and leaves it paused.
func testBackupPause(t *testing.T, e *env, c *Conn) {
	ctx := context.Background()
	b, err := c.StartBackup(ctx, e.vm.Name, []string{"vdb"}, BackupOptions{Pause: true})
	if err != nil {
		t.Fatalf("StartBackup: %v", err)
	}
	if s := e.vm.State(t); s != "paused" {
		t.Errorf("VM state during a paused backup = %q; want paused", s)
	}
	if _, err := b.OpenDisk(ctx, "vda"); err == nil {
		t.Error("OpenDisk(vda) of a vdb-only backup succeeded")
	}
	raw, _ := readExport(t, b, "vdb")
	compareDisk(t, raw, e.vm.Disks[1])
	if err := b.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	checkGone(t, e.vm, b)
	if s := e.vm.State(t); s != "paused" {
		t.Errorf("VM state after a paused backup = %q; want paused (left for the operator)", s)
	}
	e.vm.Resume(t)
}

// testBackupCancelled closes a backup with a cancelled context.
func testBackupCancelled(t *testing.T, e *env, c *Conn) {
	ctx := context.Background()
	b, err := c.StartBackup(ctx, e.vm.Name, nil, BackupOptions{})
	if err != nil {
		t.Fatalf("StartBackup: %v", err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := b.OpenDisk(cancelled, "vda"); err == nil {
		t.Error("OpenDisk with a cancelled context succeeded")
	}
	if err := b.Close(cancelled); err != nil {
		t.Fatalf("Close with a cancelled context: %v", err)
	}
	checkGone(t, e.vm, b)
	if _, err := b.OpenDisk(ctx, "vda"); err == nil {
		t.Error("OpenDisk after Close succeeded")
	}
}

// TestCleanupStale: an agent that dies mid-backup leaves the job and its
// files; the next connection's CleanupStale ends and removes them, and
// leaves a backup that is not Ferry's alone.
func TestCleanupStale(t *testing.T) {
	e := newEnv(t, testenv.VMOptions{})
	ctx := context.Background()
	crashed, err := Connect(ctx, e.keyConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	b, err := crashed.StartBackup(ctx, e.vm.Name, nil, BackupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	crashed.Close() // the agent is gone; the backup is not closed

	c := connect(t, e.keyConfig(t))
	if job := e.vm.JobType(t); job != "Unbounded" {
		t.Fatalf("job type after the crash = %q; want the leftover backup", job)
	}
	// A scratch file of an earlier crash that libvirt did not remove, and
	// one of another VM that must stay.
	stray := filepath.Join(DefaultScratchDir, BackupPrefix+e.vm.UUID+"-0badf00d-vda.qcow2")
	otherVM := filepath.Join(DefaultScratchDir, BackupPrefix+"00000000-0000-0000-0000-"+e.vm.Name[len(e.vm.Name)-8:]+"0000-vda.qcow2")
	for _, p := range []string{stray, otherVM} {
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { os.Remove(otherVM) })
	if err := c.CleanupStale(ctx, e.vm.Name); err != nil {
		t.Fatalf("CleanupStale: %v", err)
	}
	checkGone(t, e.vm, b)
	if _, err := os.Stat(stray); !os.IsNotExist(err) {
		t.Errorf("stray scratch file %s: %v; want it removed", stray, err)
	}
	if _, err := os.Stat(otherVM); err != nil {
		t.Errorf("another VM's file was removed: %v", err)
	}
	if err := c.CleanupStale(ctx, e.vm.Name); err != nil {
		t.Errorf("CleanupStale with nothing to clean: %v", err)
	}

	// Someone else's backup stays.
	sock := filepath.Join(DefaultSocketDir, "other-"+e.vm.Name+".sock")
	doc := filepath.Join(t.TempDir(), "backup.xml")
	if err := os.WriteFile(doc, []byte(`<domainbackup mode='pull'><server transport='unix' socket='`+
		sock+`'/></domainbackup>`), 0o644); err != nil {
		t.Fatal(err)
	}
	e.lv.Virsh(t, "backup-begin", e.vm.Name, doc)
	t.Cleanup(func() { e.lv.TryVirsh("domjobabort", e.vm.Name) })
	if err := c.CleanupStale(ctx, e.vm.Name); err != nil {
		t.Fatalf("CleanupStale: %v", err)
	}
	if job := e.vm.JobType(t); job != "Unbounded" {
		t.Errorf("CleanupStale ended a backup that was not Ferry's (job %q)", job)
	}
}

func checkNoJob(t *testing.T, vm *testenv.TestVM) {
	t.Helper()
	if job := vm.JobType(t); job != "None" {
		t.Errorf("VM has a %s job", job)
	}
}
