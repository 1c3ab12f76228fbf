package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
)

// DebianGuestVersion names the image scripts/debian-guest.sh builds; bump
// it when the script changes what it builds, so cached images are rebuilt.
const DebianGuestVersion = "v3"

// CacheDir is where tests keep what is slow to make and the same from run
// to run (the Debian guest image): $FERRY_TEST_CACHE, else
// /var/cache/ferry-test, so CI runs on one machine share it.
func CacheDir() string {
	if d := os.Getenv("FERRY_TEST_CACHE"); d != "" {
		return d
	}
	return "/var/cache/ferry-test"
}

// DebianGuest returns a qcow2 disk of a real Debian 12 guest configured as
// a VMware guest would be (scripts/debian-guest.sh: open-vm-tools, its NIC
// configured as ens192, an initramfs without virtio), building it into
// CacheDir the first time (a few minutes: debootstrap from Debian's
// mirror) and reusing it afterwards. Callers must not write it: they copy
// or convert it. Unavailable without root, debootstrap or libguestfs.
func DebianGuest(t testing.TB) string {
	t.Helper()
	RequireRoot(t)
	for _, p := range []string{"debootstrap", "guestfish", "qemu-img", "sfdisk"} {
		if _, err := exec.LookPath(p); err != nil {
			Unavailable(t, "%s is missing (scripts/deps.sh installs debootstrap, libguestfs-tools, qemu-utils, fdisk)", p)
		}
	}
	dir := CacheDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "debian-vmware-"+DebianGuestVersion+".qcow2")
	if _, err := os.Stat(out); err == nil {
		return out
	}
	// One build at a time: test packages run in parallel.
	unlock := lockCache(t, dir)
	defer unlock()
	if _, err := os.Stat(out); err == nil {
		return out
	}
	start := time.Now()
	cmd := exec.Command(script("debian-guest.sh"), out)
	cmd.Env = append(os.Environ(), "LIBGUESTFS_BACKEND=direct")
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("build the Debian guest image: %v\n%s", err, b)
	}
	t.Logf("built the Debian guest image %s in %s:\n%s", out, time.Since(start).Round(time.Second), b)
	return out
}

// DebianKVMGuestVersion names the image scripts/debian-kvm-guest.sh
// derives; bump it when the script changes what it derives.
const DebianKVMGuestVersion = "k1"

// The hardware the Debian KVM guest (DebianKVMGuest) was installed on and
// knows: its initramfs holds this disk bus's driver, its network
// configuration names this NIC as Debian names it there.
const (
	DebianKVMMachine = "q35"
	DebianKVMDiskBus = "sata"
	DebianKVMNIC     = "e1000e"
	DebianKVMIfName  = "enp1s0"
)

// DebianKVMGuest returns a qcow2 disk of the Debian guest of DebianGuest
// as installed on a KVM host (scripts/debian-kvm-guest.sh): the same
// guest, open-vm-tools still in it, with an initramfs for a SATA disk
// (ahci, no virtio) and its NIC configured as enp1s0, the name of an
// e1000e NIC on a q35 machine's first PCIe root port (DebianKVMMachine
// and the rest). Derived into CacheDir the first time (seconds, once the
// VMware guest is built), reused afterwards. Callers must not write it:
// they put an overlay on it or copy it.
func DebianKVMGuest(t testing.TB) string {
	t.Helper()
	base := DebianGuest(t)
	for _, p := range []string{"losetup", "chroot", "lsinitramfs"} {
		if _, err := exec.LookPath(p); err != nil {
			Unavailable(t, "%s is missing (losetup and chroot are Debian's essential mount and coreutils; lsinitramfs "+
				"comes with linux-image-amd64, which scripts/deps.sh installs)", p)
		}
	}
	dir := CacheDir()
	out := filepath.Join(dir, "debian-kvm-"+DebianGuestVersion+"-"+DebianKVMGuestVersion+".qcow2")
	if _, err := os.Stat(out); err == nil {
		return out
	}
	unlock := lockCache(t, dir)
	defer unlock()
	if _, err := os.Stat(out); err == nil {
		return out
	}
	start := time.Now()
	b, err := exec.Command(script("debian-kvm-guest.sh"), base, out).CombinedOutput()
	if err != nil {
		t.Fatalf("derive the Debian KVM guest image: %v\n%s", err, b)
	}
	t.Logf("derived the Debian KVM guest image %s in %s:\n%s", out, time.Since(start).Round(time.Second), b)
	return out
}

// lockCache takes the cache directory's build lock (test packages and
// binaries run in parallel); the function returned releases it.
func lockCache(t testing.TB, dir string) func() {
	t.Helper()
	lock, err := os.OpenFile(filepath.Join(dir, "debian-guest.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		lock.Close()
		t.Fatal(err)
	}
	return func() {
		_ = syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
		lock.Close()
	}
}

// script is the path of a file of scripts/.
func script(name string) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "scripts", name)
}

// LibguestfsTCG makes libguestfs's appliance run under TCG in this process
// and its children (the agents), when /dev/kvm is missing or does not
// work (it may be present and fail, as on the machines tests run on):
// LIBGUESTFS_BACKEND=direct, LIBGUESTFS_BACKEND_SETTINGS=force_tcg unless
// FERRY_TEST_KVM=1. It sets the process's environment once and for all
// (not t.Setenv, which a parallel test may not call); every test of the
// process wants the same.
func LibguestfsTCG(t testing.TB) {
	t.Helper()
	libguestfsOnce.Do(func() {
		libguestfsErr = os.Setenv("LIBGUESTFS_BACKEND", "direct")
		if libguestfsErr == nil && os.Getenv("FERRY_TEST_KVM") != "1" {
			libguestfsErr = os.Setenv("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
		}
	})
	if libguestfsErr != nil {
		t.Fatal(libguestfsErr)
	}
}

var (
	libguestfsOnce sync.Once
	libguestfsErr  error
)
