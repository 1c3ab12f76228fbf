//go:build integration

package kvm

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/pkg/kvmver"
	"github.com/ferry-v2v/ferry/pkg/nbd"
	"github.com/ferry-v2v/ferry/pkg/netsel"
	"github.com/ferry-v2v/ferry/pkg/seal"
	"github.com/ferry-v2v/ferry/pkg/testenv"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// env is one source host: libvirtd, an sshd on loopback and a running
// test VM.
type env struct {
	lv   *testenv.Libvirt
	sshd *testenv.SSHD
	vm   *testenv.TestVM
}

func newEnv(t *testing.T, opts testenv.VMOptions) *env {
	t.Helper()
	lv := testenv.RequireLibvirt(t)
	return &env{
		lv:   lv,
		sshd: testenv.StartSSHD(t, testenv.SSHDOptions{PasswordUser: testenv.TestUser, Password: testenv.TestPassword}),
		vm:   testenv.NewTestVM(t, lv, opts),
	}
}

// keyConfig logs in as root with the client key, dialling from the
// loopback "migration CIDR".
func (e *env) keyConfig(t *testing.T) Config {
	t.Helper()
	dialer, err := netsel.Dialer("127.0.0.0/8")
	if err != nil {
		t.Fatal(err)
	}
	return Config{Address: e.sshd.Host, Port: e.sshd.Port, User: e.sshd.User,
		PrivateKeyPEM: seal.Secret(e.sshd.ClientKeyPEM), PinnedHostKey: e.sshd.HostKey,
		Dialer: dialer, Logger: testkit.Logger(t)}
}

func connect(t *testing.T, cfg Config) *Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Connect(ctx, cfg)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return c
}

func findVM(t *testing.T, c *Conn, name string) *VM {
	t.Helper()
	vms, err := c.ListVMs(context.Background())
	if err != nil {
		t.Fatalf("ListVMs: %v", err)
	}
	for _, vm := range vms {
		if vm.Name == name {
			return vm
		}
	}
	t.Fatalf("ListVMs did not list %s", name)
	return nil
}

func TestConnectAndList(t *testing.T) {
	e := newEnv(t, testenv.VMOptions{CDROMs: 1, NICs: 2})

	t.Run("key", func(t *testing.T) {
		c := connect(t, e.keyConfig(t))
		if err := c.CheckVersions(kvmver.CephReason(true, nil, nil)); err != nil {
			t.Errorf("CheckVersions: %v", err)
		}
		checkVM(t, e.vm, findVM(t, c, e.vm.Name))
		if c.ObservedHostKey() != e.sshd.HostKey {
			t.Errorf("ObservedHostKey = %q; want %q", c.ObservedHostKey(), e.sshd.HostKey)
		}
		if _, err := c.DescribeVM(context.Background(), "no-such-vm"); !errors.Is(err, ErrNoVM) {
			t.Errorf("DescribeVM(no-such-vm) = %v; want ErrNoVM", err)
		}
	})
	t.Run("password", func(t *testing.T) {
		e.lv.RequireUserAccess(t, e.sshd.PasswordUser)
		cfg := Config{Address: e.sshd.Host, Port: e.sshd.Port, User: e.sshd.PasswordUser,
			Password: seal.Secret(e.sshd.Password), PinnedHostKey: e.sshd.HostKey, Logger: testkit.Logger(t)}
		checkVM(t, e.vm, findVM(t, connect(t, cfg), e.vm.Name))
	})
	t.Run("wrong password", func(t *testing.T) {
		cfg := Config{Address: e.sshd.Host, Port: e.sshd.Port, User: e.sshd.PasswordUser,
			Password: "wrong", PinnedHostKey: e.sshd.HostKey, Logger: testkit.Logger(t)}
		_, err := Connect(context.Background(), cfg)
		if err == nil || !strings.Contains(err.Error(), "SSH login to source") {
			t.Errorf("Connect with a wrong password = %v", err)
		}
	})
	t.Run("host keys", func(t *testing.T) { testHostKeys(t, e) })
}

func testHostKeys(t *testing.T, e *env) {
	other := authorized(newKey(t))
	otherFP, _ := Fingerprint(other)
	for _, kind := range []string{"pinned", "recorded"} {
		cfg := e.keyConfig(t)
		cfg.PinnedHostKey = ""
		if kind == "pinned" {
			cfg.PinnedHostKey = other
		} else {
			cfg.KnownHostKey = other
		}
		_, err := Connect(context.Background(), cfg)
		want := []string{"source " + e.sshd.Addr, "presented " + e.sshd.HostKeyFingerprint,
			"the " + kind + " host key is " + otherFP}
		if !errors.Is(err, ErrHostKeyMismatch) {
			t.Fatalf("%s wrong key: Connect = %v; want ErrHostKeyMismatch", kind, err)
		}
		t.Logf("%s wrong key: %v", kind, err)
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s wrong key: error %q lacks %q", kind, err, w)
			}
		}
	}
	// Trust on first use records the key; the recorded key then passes.
	cfg := e.keyConfig(t)
	cfg.PinnedHostKey = ""
	c := connect(t, cfg)
	if c.ObservedHostKey() != e.sshd.HostKey {
		t.Fatalf("TOFU ObservedHostKey = %q; want %q", c.ObservedHostKey(), e.sshd.HostKey)
	}
	cfg.KnownHostKey = c.ObservedHostKey()
	connect(t, cfg)
}

func checkVM(t *testing.T, want *testenv.TestVM, got *VM) {
	t.Helper()
	if got.UUID != want.UUID || got.State != StateRunning || got.VCPUs != want.VCPUs ||
		got.MemoryBytes != int64(want.MemoryMiB)<<20 || got.CDROMs != want.CDROMs {
		t.Errorf("VM = %+v; want uuid %s, running, %d vCPU, %d MiB, %d CD-ROMs",
			got, want.UUID, want.VCPUs, want.MemoryMiB, want.CDROMs)
	}
	var macs []string
	for _, n := range got.NICs {
		macs = append(macs, n.MAC)
		if n.Type != "user" || n.Model != "virtio" {
			t.Errorf("NIC %+v; want a user-mode virtio NIC", n)
		}
	}
	if !slices.Equal(macs, want.MACs) {
		t.Errorf("MACs = %v; want %v", macs, want.MACs)
	}
	if len(got.Disks) != len(want.Disks) {
		t.Fatalf("disks = %+v; want %d", got.Disks, len(want.Disks))
	}
	for i, d := range got.Disks {
		w := want.Disks[i]
		if d.Target != w.Target || d.Path != w.Path || d.Format != "qcow2" || d.Bus != "virtio" ||
			d.CapacityBytes != w.Size || d.AllocationBytes <= 0 || d.AllocationBytes > w.Size+(2<<20) {
			t.Errorf("disk %+v; want %s %s qcow2 virtio capacity %d", d, w.Target, w.Path, w.Size)
		}
	}
	if want.Loader == "" && got.Firmware.Type != FirmwareBIOS {
		t.Errorf("firmware = %+v; want BIOS", got.Firmware)
	}
}

func TestListUEFI(t *testing.T) {
	lv := testenv.RequireLibvirt(t)
	vm := testenv.NewTestVM(t, lv, testenv.VMOptions{UEFI: true})
	e := &env{lv: lv, sshd: testenv.StartSSHD(t, testenv.SSHDOptions{}), vm: vm}
	got := findVM(t, connect(t, e.keyConfig(t)), vm.Name)
	if got.Firmware.Type != FirmwareUEFI || got.Firmware.Loader != vm.Loader || got.Firmware.NVRAM != vm.NVRAM {
		t.Errorf("firmware = %+v; want UEFI %s with NVRAM %s", got.Firmware, vm.Loader, vm.NVRAM)
	}
}

// readExport copies a disk of the backup into a sparse raw file through
// pkg/nbd, reading only the data extents, and returns the file and the
// number of bytes read.
func readExport(t *testing.T, b interface {
	OpenDisk(context.Context, string) (net.Conn, error)
}, target string) (string, int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := b.OpenDisk(ctx, target)
	if err != nil {
		t.Fatal(err)
	}
	client, err := nbd.NewClient(ctx, conn, nbd.Options{ExportName: target})
	if err != nil {
		t.Fatalf("NBD handshake for %s: %v", target, err)
	}
	defer client.Close()
	out := filepath.Join(t.TempDir(), target+".raw")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(client.Size()); err != nil {
		t.Fatal(err)
	}
	exts, err := client.Extents(ctx, 0, client.Size())
	if err != nil {
		t.Fatalf("extents of %s: %v", target, err)
	}
	var read int64
	buf := make([]byte, 4<<20)
	for _, e := range exts {
		for off := e.Offset; off < e.End() && !e.Zero(); {
			n := min(int64(len(buf)), e.End()-off)
			if err := client.ReadAt(ctx, buf[:n], off); err != nil {
				t.Fatalf("read %s at %d: %v", target, off, err)
			}
			if _, err := f.WriteAt(buf[:n], off); err != nil {
				t.Fatal(err)
			}
			off, read = off+n, read+n
		}
	}
	return out, read
}

// compareDisk checks the raw copy against the source qcow2 byte for byte.
func compareDisk(t *testing.T, raw string, src testenv.TestDisk) {
	t.Helper()
	testenv.Run(t, "qemu-img", "compare", "-U", "-f", "raw", "-F", "qcow2", raw, src.Path)
}

func written(extents []testenv.Extent) int64 {
	var n int64
	for _, e := range extents {
		n += e.Length
	}
	return n
}

// checkGone checks that the VM has no job and the backup left no file.
func checkGone(t *testing.T, vm *testenv.TestVM, b *Backup) {
	t.Helper()
	if job := vm.JobType(t); job != "None" {
		t.Errorf("after Close the VM has a %s job", job)
	}
	for _, p := range append(b.ScratchFiles(), b.Socket()) {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is still there (%v)", p, err)
		}
	}
}

// blackholeDialer dials for real but, once dead, drops everything the
// server sends, as a source that vanished from the network would.
type blackholeDialer struct {
	dead atomic.Bool
}

func (d *blackholeDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return &blackholeConn{Conn: c, dead: &d.dead}, nil
}

type blackholeConn struct {
	net.Conn
	dead *atomic.Bool
}

func (c *blackholeConn) Read(p []byte) (int, error) {
	for {
		n, err := c.Conn.Read(p)
		if err != nil || !c.dead.Load() {
			return n, err
		}
	}
}

// TestKeepalive: a source that stops answering ends the connection within
// a few keepalive intervals instead of hanging its streams.
func TestKeepalive(t *testing.T) {
	old := keepaliveInterval
	keepaliveInterval = 100 * time.Millisecond
	t.Cleanup(func() { keepaliveInterval = old })
	testenv.RequireLibvirt(t)
	sshd := testenv.StartSSHD(t, testenv.SSHDOptions{})
	dialer := &blackholeDialer{}
	c := connect(t, Config{Address: sshd.Host, Port: sshd.Port, PrivateKeyPEM: seal.Secret(sshd.ClientKeyPEM),
		PinnedHostKey: sshd.HostKey, Dialer: dialer, Logger: testkit.Logger(t)})
	time.Sleep(3 * keepaliveInterval) // healthy: keepalives answered
	if _, err := c.ListVMs(context.Background()); err != nil {
		t.Fatalf("ListVMs on a healthy connection: %v", err)
	}
	dialer.dead.Store(true)
	ended := make(chan error, 1)
	go func() { ended <- c.ssh.Wait() }()
	select {
	case err := <-ended:
		t.Logf("connection ended: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("the SSH connection to a silent source did not end within 5 s")
	}
	if _, err := c.ListVMs(context.Background()); err == nil {
		t.Error("ListVMs succeeded over a dead connection")
	}
}
