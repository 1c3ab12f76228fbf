//go:build integration

package kvm

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/pkg/nbd"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/seal"
	"github.com/ferry-v2v/ferry/pkg/testenv"
	"github.com/ferry-v2v/ferry/pkg/testkit"
)

const sudoPassword = "ferry-sudo-password"

// unreadable makes the VM's images and backing files readable by their
// owner only (libvirt's QEMU user while the VM runs, root otherwise).
func unreadable(t *testing.T, vm *testenv.TestVM) {
	t.Helper()
	for _, d := range vm.Disks {
		for _, f := range []string{d.Path, d.Backing} {
			if f == "" {
				continue
			}
			if err := os.Chmod(f, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// sudoProcs lists the processes (sudo and qemu-nbd) serving vm's disks.
func sudoProcs(vm *testenv.TestVM) []string {
	var out []string
	cmdlines, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, f := range cmdlines {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		cmd := strings.ReplaceAll(string(b), "\x00", " ")
		if strings.Contains(cmd, "qemu-nbd ") && strings.Contains(cmd, BackupPrefix+vm.UUID) {
			out = append(out, cmd)
		}
	}
	return out
}

// TestSudoUser: a user with docs/sudoers.ferry, outside group libvirt and
// unable to read the images, opens libvirt through sudo's
// virt-ssh-helper, reads a running VM's original images through sudo's
// qemu-nbd after a snapshot, and leaves the VM on its originals with no
// qemu-nbd, socket or overlay behind.
func TestSudoUser(t *testing.T) {
	e := newEnv(t, testenv.VMOptions{Backing: true, RawData: true})
	unreadable(t, e.vm)
	user := testenv.SudoUser(t, "ferrysudo", sudoPassword, testenv.RepoFile(t, "docs/sudoers.ferry"))
	c := connect(t, Config{Address: e.sshd.Host, Port: e.sshd.Port, User: user, Password: seal.Secret(sudoPassword),
		PinnedHostKey: e.sshd.HostKey, Logger: testkit.Logger(t)})
	if !c.viaSudo {
		t.Fatal("libvirt was not opened through sudo")
	}
	vm := findVM(t, c, e.vm.Name)
	ctx := context.Background()
	caps := c.Capabilities(ctx, []*VM{vm})
	want := map[ferryv1.SourceCapabilityKind]string{
		ferryv1.SourceCapabilityKind_SOURCE_CAPABILITY_KIND_LIST_VMS: "sudo for libvirt's /usr/bin/virt-ssh-helper (docs/sudoers.ferry)",
		ferryv1.SourceCapabilityKind_SOURCE_CAPABILITY_KIND_OLD_HOST_COPY: "sudo for libvirt's /usr/bin/virt-ssh-helper (docs/sudoers.ferry), " +
			"and sudo for /usr/bin/qemu-nbd --read-only (docs/sudoers.ferry)",
	}
	for _, cp := range caps {
		if w, ok := want[cp.GetKind()]; ok && (!cp.GetAvailable() || cp.GetVia() != w) {
			t.Errorf("%s: %v, want available via %q", cp.GetKind(), cp, w)
		}
		if cp.GetKind() == ferryv1.SourceCapabilityKind_SOURCE_CAPABILITY_KIND_LIVE_COPY && cp.GetAvailable() {
			t.Errorf("live copy: %v, want unavailable", cp)
		}
	}

	refs := references(t, e.vm)
	s, err := c.StartSnapshot(ctx, vm, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	home := filepath.Join("/home", user)
	for _, sock := range s.export.sockets {
		if filepath.Dir(sock) != filepath.Join(home, UserSocketDir) {
			t.Errorf("socket %s, want it in ~/%s", sock, UserSocketDir)
		}
	}
	if fi, err := os.Stat(filepath.Join(home, UserSocketDir)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("~/%s: %v %v, want mode 0700", UserSocketDir, fi.Mode(), err)
	}
	if procs := sudoProcs(e.vm); !s.export.sudo || !slices.ContainsFunc(procs, func(p string) bool { return strings.HasPrefix(p, "sudo -n ") }) {
		t.Errorf("the export runs through sudo: %v; processes %q", s.export.sudo, procs)
	}
	for i, d := range e.vm.Disks {
		raw, _ := readExport(t, s, d.Target)
		testenv.Run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", raw, refs[i])
	}
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	expectOriginals(t, e.lv, e.vm)
	testkit.WaitFor(t, 30*time.Second, "sudo's qemu-nbd to stop", func() bool { return len(sudoProcs(e.vm)) == 0 })
	left, _ := filepath.Glob(filepath.Join(home, UserDir, "*", BackupPrefix+e.vm.UUID+"*"))
	left2, _ := filepath.Glob(filepath.Join(home, UserDir, BackupPrefix+e.vm.UUID+"*"))
	if len(left)+len(left2) != 0 {
		t.Errorf("left in ~/.ferry: %v %v", left, left2)
	}
}

// TestSudoUserDropped: the SSH connection dropping stops a sudo'd
// qemu-nbd (its terminal hangs up), though the user may not kill it.
func TestSudoUserDropped(t *testing.T) {
	e := newEnv(t, testenv.VMOptions{Stopped: true})
	unreadable(t, e.vm)
	user := testenv.SudoUser(t, "ferrysudo", sudoPassword, testenv.RepoFile(t, "docs/sudoers.ferry"))
	cfg := Config{Address: e.sshd.Host, Port: e.sshd.Port, User: user, Password: seal.Secret(sudoPassword),
		PinnedHostKey: e.sshd.HostKey, Logger: testkit.Logger(t)}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Connect(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	vm := findVM(t, c, e.vm.Name)
	if _, err := c.StartColdExport(ctx, vm, nil, nil); err != nil {
		c.Close()
		t.Fatal(err)
	}
	if len(sudoProcs(e.vm)) == 0 {
		t.Error("no qemu-nbd runs through sudo")
	}
	c.ssh.Close() // as a dropped connection or a dead agent would
	testkit.WaitFor(t, 30*time.Second, "sudo's qemu-nbd to stop with the connection", func() bool { return len(sudoProcs(e.vm)) == 0 })
	c.Close()
}

// TestSudoUserWithoutSnippet: a user outside group libvirt without the
// sudoers snippet is told what listing VMs needs, naming the snippet.
func TestSudoUserWithoutSnippet(t *testing.T) {
	e := newEnv(t, testenv.VMOptions{Stopped: true})
	user := testenv.SudoUser(t, "ferrynosudo", sudoPassword, "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Connect(ctx, Config{Address: e.sshd.Host, Port: e.sshd.Port, User: user, Password: seal.Secret(sudoPassword),
		PinnedHostKey: e.sshd.HostKey, Logger: testkit.Logger(t)})
	if err == nil {
		c.Close()
		t.Fatal("Connect as a user without group libvirt or sudo succeeded")
	}
	want := "(list VMs: user " + user + " is not root nor in group libvirt, and it may not run " +
		"`sudo -n /usr/bin/virt-ssh-helper qemu:///system` without a password: make it a member of group libvirt, " +
		"give the source a SASL user, or install the sudoers snippet docs/sudoers.ferry for it)"
	if !strings.HasSuffix(err.Error(), want) {
		t.Errorf("Connect = %v\nwant it to end with %s", err, want)
	}
}

// TestSudoUserBitmapExport: a sudo user reads a shut-off VM's images with
// their dirty bitmaps (the last round of a warm cutover by shutdown)
// through sudo's qemu-nbd: block status of qemu:dirty-bitmap:<name> marks
// only what was written since the bitmap was made; a bitmap the image
// lacks is refused with qemu-nbd's reason; nothing is left behind (no
// qemu-nbd, socket or pid file).
func TestSudoUserBitmapExport(t *testing.T) {
	e := newEnv(t, testenv.VMOptions{Stopped: true})
	vda := e.vm.Disks[0].Path
	testenv.Run(t, "qemu-img", "bitmap", "--add", vda, "b1")
	testenv.Run(t, "qemu-io", "-f", "qcow2", "-c", "write -q -P 5 1M 64k", vda)
	unreadable(t, e.vm)
	user := testenv.SudoUser(t, "ferrysudo", sudoPassword, testenv.RepoFile(t, "docs/sudoers.ferry"))
	c := connect(t, Config{Address: e.sshd.Host, Port: e.sshd.Port, User: user, Password: seal.Secret(sudoPassword),
		PinnedHostKey: e.sshd.HostKey, Logger: testkit.Logger(t)})
	vm := findVM(t, c, e.vm.Name)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	if _, err := c.StartBitmapExport(ctx, vm, map[string]string{"vda": "nope"}, nil); err == nil ||
		!strings.Contains(err.Error(), "Bitmap 'nope' is not found") {
		t.Errorf("StartBitmapExport of a bitmap the image lacks = %v; want qemu-nbd's refusal", err)
	}
	x, err := c.StartBitmapExport(ctx, vm, map[string]string{"vda": "b1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !x.sudo {
		t.Error("the bitmap export does not run through sudo")
	}
	conn, err := x.OpenDisk(ctx, "vda")
	if err != nil {
		t.Fatal(err)
	}
	client, err := nbd.NewClient(ctx, conn, nbd.Options{ExportName: "vda", MetaContext: "qemu:dirty-bitmap:" + x.ExportBitmap("vda")})
	if err != nil {
		t.Fatal(err)
	}
	exts, err := client.Extents(ctx, 0, client.Size())
	client.Close()
	if err != nil {
		t.Fatal(err)
	}
	var dirty [][2]int64
	for _, ex := range exts {
		if ex.Dirty() {
			dirty = append(dirty, [2]int64{ex.Offset, ex.Length})
		}
	}
	if want := [][2]int64{{1 << 20, 64 << 10}}; !slices.Equal(dirty, want) {
		t.Errorf("dirty extents %v; want %v", dirty, want)
	}
	if err := x.Close(ctx); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 30*time.Second, "sudo's qemu-nbd to stop", func() bool { return len(sudoProcs(e.vm)) == 0 })
	left, _ := filepath.Glob(filepath.Join("/home", user, UserDir, "*", BackupPrefix+e.vm.UUID+"*"))
	if len(left) != 0 {
		t.Errorf("left in ~/.ferry: %v", left)
	}
}

// TestNoisyLogin: what the SSH user's login prints on stderr (here its
// ~/.ssh/rc; pyenv's "cannot rehash" from a shell start-up file was seen)
// is not read as the answer of Ferry's commands: the connection's probe
// of the user and the inventory work, and the noise is not taken for an
// unreadable image.
func TestNoisyLogin(t *testing.T) {
	e := newEnv(t, testenv.VMOptions{Stopped: true})
	user := testenv.SudoUser(t, "ferrynoisy", sudoPassword, testenv.RepoFile(t, "docs/sudoers.ferry"))
	rc := filepath.Join("/home", user, ".ssh", "rc")
	if err := os.MkdirAll(filepath.Dir(rc), 0o755); err != nil {
		t.Fatal(err)
	}
	noise := "rm: cannot remove '/root/.pyenv/shims/tmp.x': No such file or directory\npyenv: cannot rehash: /root/.pyenv/shims isn't writable"
	if err := os.WriteFile(rc, []byte("printf '%s\\n' "+shellQuote(noise)+" >&2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	testenv.Run(t, "chown", "-R", user+":", filepath.Dir(rc))
	c := connect(t, Config{Address: e.sshd.Host, Port: e.sshd.Port, User: user, Password: seal.Secret(sudoPassword),
		PinnedHostKey: e.sshd.HostKey, Logger: testkit.Logger(t)})
	if c.home != filepath.Join("/home", user) {
		t.Errorf("the probe read home %q, want /home/%s", c.home, user)
	}
	vm := findVM(t, c, e.vm.Name)
	if len(vm.Disks) != len(e.vm.Disks) {
		t.Fatalf("inventory: %d disks, want %d", len(vm.Disks), len(e.vm.Disks))
	}
	// The noise must not make an image unreadable in the check of access.
	for _, cp := range c.Capabilities(context.Background(), []*VM{vm}) {
		if strings.Contains(cp.GetVia()+cp.GetMissing(), "pyenv") {
			t.Errorf("%s: %v mentions the login's noise", cp.GetKind(), cp)
		}
	}
}
