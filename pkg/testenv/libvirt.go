package testenv

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
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

// RequireLibvirt makes sure the system D-Bus, virtlogd and libvirtd run, in
// that order, and that libvirtd answers on qemu:///system. As root it runs
// scripts/start-libvirtd.sh once per test binary: the script also mends a
// machine whose processes were killed (a stale bus socket, a libvirtd that
// started before the bus and so admits root only), and serialises parallel
// test packages. Missing programs skip the test, or fail it in CI.
func RequireLibvirt(t testing.TB) *Libvirt {
	t.Helper()
	for _, p := range []string{"virsh", "libvirtd", "virtlogd", "qemu-system-x86_64", "qemu-img", "qemu-io"} {
		LookPath(t, p)
	}
	lv := &Libvirt{URI: SystemURI}
	libvirtUp.Lock()
	defer libvirtUp.Unlock()
	if libvirtUp.ok {
		return lv
	}
	if os.Geteuid() != 0 {
		if !lv.answers() {
			Unavailable(t, "libvirtd does not answer on %s and only root may start it "+
				"(scripts/start-libvirtd.sh)", lv.URI)
		}
		libvirtUp.ok = true
		return lv
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if out, err := run(ctx, nil, "bash", startScript()); err != nil {
		t.Fatalf("starting libvirtd: %v\n%s", err, out)
	}
	libvirtUp.ok = true
	return lv
}

// startScript is scripts/start-libvirtd.sh of the source tree this package
// was built from.
func startScript() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "scripts", "start-libvirtd.sh")
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
// scripts/start-libvirtd.sh see to that.
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
