package testenv

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// SystemURI is the libvirt URI the tests use.
const SystemURI = "qemu:///system"

// Libvirt is a running libvirtd, driven with virsh.
type Libvirt struct {
	// URI is the connection URI, qemu:///system.
	URI string
}

var libvirtUp struct {
	sync.Mutex
	ok bool
}

// RequireLibvirt makes sure libvirtd answers on qemu:///system, starting
// the system D-Bus (polkit lets members of group libvirt in through it),
// virtlogd and libvirtd when it does not, as scripts/start-libvirtd.sh
// does. Missing programs skip the test, or fail it in CI.
func RequireLibvirt(t testing.TB) *Libvirt {
	t.Helper()
	for _, p := range []string{"virsh", "libvirtd", "virtlogd", "qemu-system-x86_64", "qemu-img", "qemu-io"} {
		LookPath(t, p)
	}
	lv := &Libvirt{URI: SystemURI}
	libvirtUp.Lock()
	defer libvirtUp.Unlock()
	if libvirtUp.ok || lv.answers() {
		libvirtUp.ok = true
		return lv
	}
	RequireRoot(t)
	if err := os.MkdirAll("/run/libvirt", 0o755); err != nil {
		t.Fatal(err)
	}
	startSystemBus(t)
	for _, daemon := range []string{"virtlogd", "libvirtd"} {
		if exec.Command("pgrep", "-x", daemon).Run() != nil {
			Run(t, LookPath(t, daemon), "-d")
		}
	}
	if !poll(20*time.Second, 200*time.Millisecond, lv.answers) {
		t.Fatalf("libvirtd did not answer on %s within 20 s", lv.URI)
	}
	libvirtUp.ok = true
	return lv
}

// startSystemBus starts dbus-daemon --system when there is no system bus,
// so that libvirtd, started next, can ask polkit about non-root users.
func startSystemBus(t testing.TB) {
	t.Helper()
	const socket = "/run/dbus/system_bus_socket"
	if _, err := os.Stat(socket); err == nil {
		return
	}
	daemon, err := exec.LookPath("dbus-daemon")
	if err != nil {
		t.Logf("no dbus-daemon: only root may use libvirtd")
		return
	}
	if err := os.MkdirAll("/run/dbus", 0o755); err != nil {
		t.Fatal(err)
	}
	Run(t, daemon, "--system", "--fork")
}

func (lv *Libvirt) answers() bool {
	_, err := lv.TryVirsh("version")
	return err == nil
}

// Virsh runs virsh on the URI and returns its output; the test fails if
// virsh does.
func (lv *Libvirt) Virsh(t testing.TB, args ...string) string {
	t.Helper()
	out, err := lv.TryVirsh(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TryVirsh runs virsh on the URI and returns its output or an error with
// virsh's message.
func (lv *Libvirt) TryVirsh(args ...string) (string, error) {
	out, err := run(context.Background(), nil, "virsh", append([]string{"-q", "-c", lv.URI}, args...)...)
	return strings.TrimSpace(out), err
}

// RequireUserAccess stops the test unless the local user may use libvirtd
// through polkit (membership of group libvirt). That needs the system D-Bus
// to have run before libvirtd started; RequireLibvirt and
// scripts/start-libvirtd.sh start them in that order.
func (lv *Libvirt) RequireUserAccess(t testing.TB, user string) {
	t.Helper()
	_, err := run(context.Background(), nil, LookPath(t, "runuser"), "-u", user, "--",
		"virsh", "-q", "-c", lv.URI, "version")
	if err != nil {
		Unavailable(t, "user %s cannot use libvirtd (%v); libvirtd must start after the "+
			"system D-Bus (dbus-daemon --system --fork) so polkit admits group libvirt: "+
			"restart it with scripts/start-libvirtd.sh", user, err)
	}
}
