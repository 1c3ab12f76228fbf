//go:build integration

package kvm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	osuser "os/user"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/agent/internal/pipeline"
	"github.com/ferry-v2v/ferry/pkg/seal"
	"github.com/ferry-v2v/ferry/pkg/testenv"
	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// guestWrite writes pattern over [off, off+length) of a running VM's disk
// through its QEMU, as the guest would: after a snapshot the write lands
// in the overlay.
func guestWrite(t *testing.T, lv *testenv.Libvirt, vm *testenv.TestVM, disk int, pattern byte, off, length int64) {
	t.Helper()
	out := lv.Virsh(t, "qemu-monitor-command", vm.Name, "--hmp",
		fmt.Sprintf(`qemu-io -d /machine/peripheral/virtio-disk%d/virtio-backend "write -P 0x%02x %d %d"`, disk, pattern, off, length))
	if strings.Contains(out, "rror") {
		t.Fatalf("qemu-io write on %s disk %d: %s", vm.Name, disk, out)
	}
}

// holds says whether the image (read through its backing chain) holds
// pattern over the range.
func holds(img, format string, pattern byte, off, length int64) bool {
	return exec.Command("qemu-io", "-r", "-U", "-f", format, "-c",
		fmt.Sprintf("read -q -P 0x%02x %d %d", pattern, off, length), img).Run() == nil
}

// readSource copies a source into a sparse raw file through its extents
// and returns the file and the bytes of its data extents.
func readSource(t *testing.T, src pipeline.Source) (string, int64) {
	t.Helper()
	ctx := context.Background()
	out := filepath.Join(t.TempDir(), "disk.raw")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(src.Size()); err != nil {
		t.Fatal(err)
	}
	var data int64
	for off := int64(0); off < src.Size(); {
		exts, err := src.Extents(ctx, off, src.Size()-off)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range exts {
			if !e.Zero {
				buf := make([]byte, e.Length)
				if err := src.ReadAt(ctx, buf, e.Offset); err != nil {
					t.Fatal(err)
				}
				if _, err := f.WriteAt(buf, e.Offset); err != nil {
					t.Fatal(err)
				}
				data += e.Length
			}
			off = e.Offset + e.Length
		}
	}
	return out, data
}

// references copies each disk of vm (through its backing chain) into a
// raw file: the disks as they are now.
func references(t *testing.T, vm *testenv.TestVM) []string {
	t.Helper()
	var out []string
	for _, d := range vm.Disks {
		ref := filepath.Join(t.TempDir(), d.Target+".ref.raw")
		testenv.Run(t, "qemu-img", "convert", "-U", "-f", d.Format, "-O", "raw", d.Path, ref)
		out = append(out, ref)
	}
	return out
}

// diskPaths is the VM's disk sources, live or (inactive) as defined.
func diskPaths(t *testing.T, lv *testenv.Libvirt, vm *testenv.TestVM, inactive bool) []string {
	t.Helper()
	args := []string{"domblklist", vm.Name}
	if inactive {
		args = append(args, "--inactive")
	}
	var out []string
	for _, line := range strings.Split(lv.Virsh(t, args...), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && strings.HasPrefix(f[0], "vd") {
			out = append(out, f[1])
		}
	}
	return out
}

// expectOriginals checks that the VM is on its original images, live and
// as defined, with no block job, and that no overlay or socket is left.
func expectOriginals(t *testing.T, lv *testenv.Libvirt, vm *testenv.TestVM) {
	t.Helper()
	want := []string{vm.Disks[0].Path, vm.Disks[1].Path}
	if vm.State(t) != "shut off" {
		if got := diskPaths(t, lv, vm, false); !slices.Equal(got, want) {
			t.Errorf("live disks %v, want the originals %v", got, want)
		}
		for _, d := range []string{"vda", "vdb"} {
			if out := lv.Virsh(t, "blockjob", vm.Name, d, "--raw"); strings.Contains(out, "type=") {
				t.Errorf("disk %s has a block job: %s", d, out)
			}
		}
	}
	if got := diskPaths(t, lv, vm, true); !slices.Equal(got, want) {
		t.Errorf("defined disks %v, want the originals %v", got, want)
	}
	testkit.WaitFor(t, 30*time.Second, "no overlay, socket or qemu-nbd of the snapshot left", func() bool {
		var m []string
		for _, dir := range []string{DefaultSocketDir, DefaultScratchDir} {
			g, _ := filepath.Glob(filepath.Join(dir, BackupPrefix+vm.UUID+"*"))
			m = append(m, g...)
		}
		return len(m) == 0 && len(coldProcs(vm)) == 0
	})
}

// TestSnapshot reads a running VM's disks (a qcow2 on a backing file, a
// raw one) by the snapshot method: what the export serves equals the
// disks at the snapshot while the guest writes on, Close merges those
// writes back into the original images and leaves the VM on them with no
// overlay; a commit a crash interrupted is finished by the janitor; a VM
// stopped on its overlays (its host rebooted) is merged offline.
func TestSnapshot(t *testing.T) {
	e := newEnv(t, testenv.VMOptions{Backing: true, RawData: true})
	cfg := e.keyConfig(t)
	c := connect(t, cfg)
	vm := findVM(t, c, e.vm.Name)
	ctx := context.Background()
	const written = 0x77
	mib := int64(1 << 20)

	t.Run("copy and merge back", func(t *testing.T) {
		refs := references(t, e.vm)
		s, err := c.StartSnapshot(ctx, vm, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := diskPaths(t, e.lv, e.vm, false); !slices.Equal(got, s.Overlays()) {
			t.Fatalf("the VM runs on %v, want the overlays %v", got, s.Overlays())
		}
		guestWrite(t, e.lv, e.vm, 0, written, 8*mib, mib)
		guestWrite(t, e.lv, e.vm, 1, written, 8*mib, mib)
		for i, d := range e.vm.Disks {
			raw, _ := readExport(t, s, d.Target)
			testenv.Run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", raw, refs[i])
		}
		if err := s.Close(ctx); err != nil {
			t.Fatal(err)
		}
		expectOriginals(t, e.lv, e.vm)
		for _, d := range e.vm.Disks {
			if !holds(d.Path, d.Format, written, 8*mib, mib) {
				t.Errorf("the guest's write after the snapshot is not in %s: the commit lost it", d.Path)
			}
		}
	})

	t.Run("image file reader", func(t *testing.T) {
		refs := references(t, e.vm)
		files := cfg
		files.ImageFileReader = true
		c2 := connect(t, files)
		s, err := c2.StartSnapshot(ctx, vm, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		guestWrite(t, e.lv, e.vm, 0, written+3, 12*mib, mib)
		for i, d := range e.vm.Disks {
			f, ok := s.ImageSource(d.Target).(*ImageFile)
			if !ok {
				t.Fatalf("disk %s is not read from its image file", d.Target)
			}
			raw, data := readSource(t, f)
			testenv.Run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", raw, refs[i])
			// Holes never read: only what the map says is data, which is
			// what the test wrote (a qcow2 cluster rounds it up).
			if f.ReadBytes() != data || data >= f.Size()/2 {
				t.Errorf("disk %s: read %d bytes of the image files for %d bytes of data extents in %d", d.Target, f.ReadBytes(), data, f.Size())
			}
			t.Logf("disk %s: %d bytes read of %d (virtual size)", d.Target, f.ReadBytes(), f.Size())
		}
		if err := s.Close(ctx); err != nil {
			t.Fatal(err)
		}
		c2.Close()
		expectOriginals(t, e.lv, e.vm)
	})

	t.Run("janitor finishes an interrupted commit", func(t *testing.T) {
		slow := cfg
		slow.CommitBandwidth = 1
		c2 := connect(t, slow)
		s, err := c2.StartSnapshot(ctx, vm, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		guestWrite(t, e.lv, e.vm, 0, written+1, 16*mib, 4*mib)
		d := NewDriver(testkit.Logger(t), nil, Options{StateDir: t.TempDir()})
		id, err := d.remember(cfg, "127.0.0.0/8", "migrationJobs/snap", s.leftoverOf())
		if err != nil {
			t.Fatal(err)
		}
		// The agent dies with the commit under way: a closing snapshot's
		// readers stopped, its commit begun at 1 MiB/s, nothing pivoted.
		if err := s.export.Close(ctx); err != nil {
			t.Fatal(err)
		}
		cctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
		if err := c2.RestoreOriginals(cctx, s.uuid, s.isOverlay); err == nil {
			t.Fatal("the 4 MiB commit at 1 MiB/s finished within 1.5 s; the test needs it under way")
		}
		cancel()
		c2.Close()
		if out := e.lv.Virsh(t, "blockjob", e.vm.Name, "vda", "--raw"); !strings.Contains(out, "type=Active Block Commit") {
			t.Fatalf("no commit under way after the crash: %s", out)
		}
		d.release(id, false)
		if n, err := d.CleanupLeftovers(ctx); n != 1 || err != nil {
			t.Fatalf("CleanupLeftovers = %d, %v; want the snapshot's record ended", n, err)
		}
		expectOriginals(t, e.lv, e.vm)
		if !holds(e.vm.Disks[0].Path, "qcow2", written+1, 16*mib, 4*mib) {
			t.Error("the write under the interrupted commit is not in the original image")
		}
	})

	t.Run("stopped on its overlays", func(t *testing.T) {
		s, err := c.StartSnapshot(ctx, vm, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		guestWrite(t, e.lv, e.vm, 1, written+2, 32*mib, mib)
		e.lv.Virsh(t, "destroy", e.vm.Name) // as the host's reboot would
		if got := diskPaths(t, e.lv, e.vm, true); !slices.Equal(got, s.Overlays()) {
			t.Fatalf("the stopped VM is defined on %v, want the overlays %v", got, s.Overlays())
		}
		if err := s.Close(ctx); err != nil {
			t.Fatal(err)
		}
		expectOriginals(t, e.lv, e.vm)
		if !holds(e.vm.Disks[1].Path, "raw", written+2, 32*mib, mib) {
			t.Error("the write before the stop is not in the original raw image")
		}
		if _, err := os.Stat(e.vm.Disks[1].Path); err != nil {
			t.Fatal(err)
		}
	})
}

// TestUserWithoutLibvirt: a non-root user that libvirtd does not admit
// (not in group libvirt) is told what listing VMs needs.
func TestUserWithoutLibvirt(t *testing.T) {
	e := newEnv(t, testenv.VMOptions{Stopped: true})
	const user, password = "ferrynolv", "ferry-nolv-password"
	if _, err := osuser.Lookup(user); err != nil {
		testenv.Run(t, "useradd", "-m", "-s", "/bin/sh", user)
	}
	testenv.Run(t, "sh", "-c", "echo "+user+":"+password+" | chpasswd")
	cfg := Config{Address: e.sshd.Host, Port: e.sshd.Port, User: user, Password: seal.Secret(password),
		PinnedHostKey: e.sshd.HostKey, Logger: testkit.Logger(t)}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Connect(ctx, cfg)
	if err == nil {
		c.Close()
		t.Fatal("Connect as a user outside group libvirt succeeded")
	}
	want := "(list VMs: user ferrynolv is not root nor in group libvirt, and it may not run " +
		"`sudo -n /usr/bin/virt-ssh-helper qemu:///system` without a password: make it a member of group libvirt, " +
		"give the source a SASL user, or install the sudoers snippet docs/sudoers.ferry for it)"
	if !strings.HasSuffix(err.Error(), want) {
		t.Errorf("Connect = %v\nwant it to end with %s", err, want)
	}
}

// TestSnapshotQuiesced: a guest with a connected QEMU guest agent has its
// filesystems frozen for the snapshot and thawed right after.
func TestSnapshotQuiesced(t *testing.T) {
	e := newEnv(t, testenv.VMOptions{GuestIP: "10.91.0.5/24"})
	testkit.WaitFor(t, 3*time.Minute, "the guest agent to connect", func() bool {
		return strings.Contains(e.lv.Virsh(t, "dumpxml", e.vm.Name), "state='connected'")
	})
	c := connect(t, e.keyConfig(t))
	vm := findVM(t, c, e.vm.Name)
	ctx := context.Background()
	s, err := c.StartSnapshot(ctx, vm, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !s.quiesced {
		t.Error("the snapshot of a guest with a connected guest agent was not quiesced")
	}
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 30*time.Second, "the guest's console to show a freeze then a thaw", func() bool {
		console, _ := os.ReadFile(e.vm.ConsoleLog)
		f, th := strings.Index(string(console), "guestinit: filesystems frozen"), strings.Index(string(console), "guestinit: filesystems thawed")
		return f >= 0 && th > f
	})
	expectOriginals(t, e.lv, e.vm)
}
