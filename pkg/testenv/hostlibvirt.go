package testenv

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// HostLibvirt is a libvirtd of one simulated host, beside the machine's
// own (which it never touches): a process of its own in the host's
// network namespace, with a private mount namespace in which a directory
// of its own is bind-mounted over each of /run/libvirt, /var/lib/libvirt,
// /var/cache/libvirt, /etc/libvirt (a config written for it) and
// /var/log/libvirt, plus the host's own Binds (its local storage, say).
// Its domains run QEMU as root with no security driver, no cgroups, no
// per-domain mount namespace and their consoles in files (no virtlogd).
//
// The host's other programs see the same machine through Command: the
// same binds, and its /run/libvirt over the machine's, so qemu:///system
// there is this libvirtd. Outside, URI names its socket.
//
// When the test ends its domains are destroyed and undefined, its
// networks destroyed, the daemon and whatever it left in its mount
// namespace (dnsmasq) killed, and its directories removed.
type HostLibvirt struct {
	Libvirt
	// Dir holds the daemon's directories; RunDir is its /run/libvirt.
	Dir, RunDir string
	ns          *NetNS
	binds       [][2]string
}

// HostLibvirtOptions say where a HostLibvirt runs.
type HostLibvirtOptions struct {
	// NetNS is the host's network namespace (nil: the root one).
	NetNS *NetNS
	// Binds mount directories over paths in the host's view: [0] over [1].
	// A missing [1] is made (on the machine's file system, unless it lies
	// under one of the daemon's own directories); the caller removes it.
	Binds [][2]string
}

// hostLibvirtdConf lets root connect without polkit and logs to the
// daemon's own /var/log/libvirt.
const hostLibvirtdConf = `auth_unix_rw = "none"
auth_unix_ro = "none"
unix_sock_group = "root"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
`

// hostQemuConf keeps the host's domains out of everything the machine's
// libvirtd manages: cgroups, virtlogd, security labels, xattrs.
const hostQemuConf = `user = "root"
group = "root"
security_driver = "none"
stdio_handler = "file"
cgroup_controllers = [ ]
namespaces = [ ]
remember_owner = 0
`

// daemonDirs are the daemon's own directories (under HostLibvirt.Dir)
// and where it sees them.
var daemonDirs = [][2]string{{"run", "/run/libvirt"}, {"lib", "/var/lib/libvirt"}, {"cache", "/var/cache/libvirt"},
	{"etc", "/etc/libvirt"}, {"log", "/var/log/libvirt"}}

// hostLibvirtdName is the daemon's process name: not "libvirtd", which
// scripts/start-libvirtd.sh looks for to find (and may restart) the
// machine's own.
const hostLibvirtdName = "ferry-libvirtd"

// StartHostLibvirt starts the libvirtd of the host called name (for the
// log) and waits until it answers.
func StartHostLibvirt(t testing.TB, name string, opts HostLibvirtOptions) *HostLibvirt {
	t.Helper()
	RequireRoot(t)
	for _, p := range []string{"virsh", "unshare", "mount", "qemu-system-x86_64"} {
		LookPath(t, p)
	}
	bin := LookPath(t, "libvirtd")
	dir, err := os.MkdirTemp("", "ferry-lv-"+name+"-")
	if err != nil {
		t.Fatal(err)
	}
	h := &HostLibvirt{Dir: dir, RunDir: filepath.Join(dir, "run"), ns: opts.NetNS, binds: opts.Binds}
	h.URI = SystemURI + "?socket=" + filepath.Join(h.RunDir, "libvirt-sock")
	var daemonBinds [][2]string
	for _, d := range daemonDirs {
		if err := os.MkdirAll(filepath.Join(dir, d[0]), 0o755); err != nil {
			t.Fatal(err)
		}
		daemonBinds = append(daemonBinds, [2]string{filepath.Join(dir, d[0]), d[1]})
	}
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(dir, "etc", "libvirtd.conf"), []byte(hostLibvirtdConf), 0o644))
	// VNC ports of its own: the machine's libvirtd hands out 5900 and up,
	// and two daemons in one network namespace each finding a port free
	// let the second QEMU fail to bind it ("Failed to find an available
	// port"). A block of 100 from 6000 that no other host's daemon holds.
	vnc := 6000 + 100*claim(t, "vnc-ports", 0, 39, nil)
	qemuConf := hostQemuConf + fmt.Sprintf("remote_display_port_min = %d\nremote_display_port_max = %d\n", vnc, vnc+99)
	must(os.WriteFile(filepath.Join(dir, "etc", "qemu.conf"), []byte(qemuConf), 0o644))
	// The machine's QEMU capabilities, when it has them, spare a probe of
	// QEMU (tens of seconds on a loaded machine); libvirt checks they
	// match the binaries.
	_ = exec.Command("cp", "-a", "/var/cache/libvirt/qemu", filepath.Join(dir, "cache")).Run()
	exe := filepath.Join(dir, hostLibvirtdName)
	must(os.Symlink(bin, exe))
	pidFile := filepath.Join(dir, "libvirtd.pid")
	// A libvirtd that saw the machine's /run/libvirt would take over (and
	// on exit remove) the machine's libvirtd's sockets: it starts only
	// where each of its directories is a mount of its own.
	guard := "set -e\n"
	for _, d := range daemonDirs {
		guard += "mountpoint -q " + shellQuote(d[1]) + "\n"
	}
	argv := h.command(daemonBinds, "sh", "-c", guard+`exec "$@"`, "ferry-libvirtd-guard",
		exe, "--config", "/etc/libvirt/libvirtd.conf", "--pid-file", pidFile)
	log, err := os.Create(filepath.Join(dir, "libvirtd.out"))
	must(err)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start the libvirtd of %s: %v", name, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); log.Close(); close(exited) }()
	t.Cleanup(func() { h.stop(t, cmd.Process.Pid, exited) })
	if !poll(90*time.Second, 200*time.Millisecond, func() bool {
		select {
		case <-exited:
			return true
		default:
		}
		return h.answers()
	}) || !h.answers() {
		out, _ := os.ReadFile(filepath.Join(dir, "libvirtd.out"))
		lg, _ := os.ReadFile(filepath.Join(dir, "log", "libvirtd.log"))
		t.Fatalf("the libvirtd of %s (%s) does not answer on %s: %s\n%s", name, strings.Join(argv, " "), h.URI, out, lg)
	}
	return h
}

// Command returns the argument list that runs argv as a program of this
// host: in its network namespace, its binds made and its /run/libvirt
// over the machine's.
func (h *HostLibvirt) Command(argv ...string) []string {
	return h.command([][2]string{{h.RunDir, "/run/libvirt"}}, argv...)
}

// command runs argv in the host's network namespace and a private mount
// namespace with more, then h's binds (which may lie under one of more:
// the storage path under /var/lib/libvirt). Each source is mounted on a
// directory of h.Dir first, so that one bind hiding another's source
// (the storage directory under /var/lib/libvirt) does no harm.
func (h *HostLibvirt) command(more [][2]string, argv ...string) []string {
	binds := append(append([][2]string{}, more...), h.binds...)
	var script strings.Builder
	script.WriteString("set -e\n")
	for i, b := range binds {
		stage := filepath.Join(h.Dir, "stage", strconv.Itoa(i))
		fmt.Fprintf(&script, "mkdir -p %s; mount --bind %s %s\n", shellQuote(stage), shellQuote(b[0]), shellQuote(stage))
	}
	for i, b := range binds {
		stage := filepath.Join(h.Dir, "stage", strconv.Itoa(i))
		fmt.Fprintf(&script, "mkdir -p %s; mount --bind %s %s\n", shellQuote(b[1]), shellQuote(stage), shellQuote(b[1]))
	}
	script.WriteString(`exec "$@"`)
	args := []string{"unshare", "-m", "--propagation", "private", "sh", "-c", script.String(), "ferry-host"}
	return h.ns.Command(append(args, argv...)...)
}

// shellQuote quotes s for sh.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// stop tears the daemon down (see HostLibvirt).
func (h *HostLibvirt) stop(t testing.TB, pid int, exited <-chan struct{}) {
	mnt, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid))
	if out, err := h.TryVirsh("list", "--all", "--name"); err == nil {
		for _, d := range strings.Fields(out) {
			_, _ = h.TryVirsh("destroy", d)
			_, _ = h.TryVirsh("undefine", "--nvram", d)
		}
	}
	if out, err := h.TryVirsh("net-list", "--all", "--name"); err == nil {
		for _, n := range strings.Fields(out) {
			_, _ = h.TryVirsh("net-destroy", n)
		}
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(15 * time.Second):
		_ = syscall.Kill(pid, syscall.SIGKILL)
		<-exited
	}
	// What the daemon started and left (dnsmasq, a QEMU it could not
	// destroy) shares its mount namespace, which no other process has.
	if mnt != "" {
		for _, p := range mountNSPeers(mnt) {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
	}
	if err := os.RemoveAll(h.Dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Errorf("remove %s: %v", h.Dir, err)
	}
}

// mountNSPeers lists the processes in the mount namespace mnt
// ("mnt:[N]", from /proc/PID/ns/mnt).
func mountNSPeers(mnt string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); l == mnt {
			pids = append(pids, pid)
		}
	}
	return pids
}

// Domains lists the names of the domains this libvirtd runs (running
// true) or has defined.
func (lv *Libvirt) Domains(t testing.TB, running bool) []string {
	t.Helper()
	args := []string{"list", "--name"}
	if !running {
		args = append(args, "--all")
	}
	return strings.Fields(lv.Virsh(t, args...))
}
