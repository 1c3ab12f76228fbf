// Command guestinit is the init of the test guests that boot
// (testenv.VMOptions.GuestAgent): a static program, the only one in their
// initramfs. It loads the kernel modules the initramfs carries (virtio
// PCI, network and console), gives the NIC the address named on the
// kernel command line (ferry.ip=10.1.2.3/24), and answers the QEMU guest
// agent protocol on the virtio port org.qemu.guest_agent.0: guest-sync,
// guest-sync-delimited, guest-ping, guest-info, guest-fsfreeze-* (logged on
// the console; there is no filesystem to freeze) and
// guest-network-get-interfaces, the last from the kernel's own view of
// its interfaces. It never exits (init must not).
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const portName = "org.qemu.guest_agent.0"

func main() {
	logf("guestinit: starting")
	for _, m := range [][3]string{{"devtmpfs", "/dev", "devtmpfs"}, {"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"}} {
		_ = os.MkdirAll(m[1], 0o755)
		if err := unix.Mount(m[0], m[1], m[2], 0, ""); err != nil {
			logf("mount %s: %v", m[1], err)
		}
	}
	loadModules("/modules")
	if err := configureNIC(); err != nil {
		logf("configure the NIC: %v", err)
	}
	for {
		port, err := openPort()
		if err != nil {
			time.Sleep(200 * time.Millisecond)
			continue
		}
		logf("guestinit: serving the guest agent protocol on %s", port.Name())
		serve(port)
		port.Close()
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stdout, format+"\n", args...)
}

// loadModules loads the modules listed, in order, in dir/order.
func loadModules(dir string) {
	order, err := os.ReadFile(filepath.Join(dir, "order"))
	if err != nil {
		logf("no module list: %v", err)
		return
	}
	for _, name := range strings.Fields(string(order)) {
		f, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			logf("module %s: %v", name, err)
			continue
		}
		if err := unix.FinitModule(int(f.Fd()), "", 0); err != nil && err != unix.EEXIST {
			logf("load module %s: %v", name, err)
		}
		f.Close()
	}
}

// configureNIC gives the first NIC other than lo the address of ferry.ip
// and brings it and lo up.
func configureNIC() error {
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return err
	}
	var prefix netip.Prefix
	for _, f := range strings.Fields(string(cmdline)) {
		if v, ok := strings.CutPrefix(f, "ferry.ip="); ok {
			if prefix, err = netip.ParsePrefix(v); err != nil {
				return fmt.Errorf("ferry.ip=%s: %w", v, err)
			}
		}
	}
	if !prefix.IsValid() || !prefix.Addr().Is4() {
		return fmt.Errorf("no IPv4 ferry.ip= on the kernel command line")
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := up(fd, "lo"); err != nil {
		return err
	}
	var name string
	for deadline := time.Now().Add(time.Minute); name == "" && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		ifaces, _ := net.Interfaces()
		for _, i := range ifaces {
			if i.Flags&net.FlagLoopback == 0 && name == "" {
				name = i.Name
			}
		}
	}
	if name == "" {
		return fmt.Errorf("no NIC appeared")
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := ifr.SetInet4Addr(prefix.Addr().AsSlice()); err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFADDR, ifr); err != nil {
		return fmt.Errorf("set the address of %s: %w", name, err)
	}
	mask := net.CIDRMask(prefix.Bits(), 32)
	if err := ifr.SetInet4Addr(mask); err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFNETMASK, ifr); err != nil {
		return fmt.Errorf("set the netmask of %s: %w", name, err)
	}
	if err := up(fd, name); err != nil {
		return err
	}
	logf("guestinit: %s has %s", name, prefix)
	return nil
}

func up(fd int, name string) error {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("flags of %s: %w", name, err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring %s up: %w", name, err)
	}
	return nil
}

// openPort opens the guest agent's virtio port, found by name in sysfs.
func openPort() (*os.File, error) {
	names, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil || strings.TrimSpace(string(b)) != portName {
			continue
		}
		return os.OpenFile("/dev/"+filepath.Base(filepath.Dir(n)), os.O_RDWR, 0)
	}
	return nil, os.ErrNotExist
}

// noDelimiters drops the 0xFF bytes a client may send to reset the
// agent's parser.
type noDelimiters struct{ r io.Reader }

func (d noDelimiters) Read(p []byte) (int, error) {
	for {
		n, err := d.r.Read(p)
		out := bytes.ReplaceAll(p[:n], []byte{0xff}, nil)
		copy(p, out)
		if len(out) > 0 || err != nil {
			return len(out), err
		}
	}
}

type request struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments"`
}

// serve answers requests until reading the port fails. A host that is
// not connected reads as end of file: the caller opens the port again.
func serve(port *os.File) {
	dec := json.NewDecoder(bufio.NewReader(noDelimiters{port}))
	for {
		var req request
		if err := dec.Decode(&req); err != nil {
			if err == io.EOF {
				time.Sleep(200 * time.Millisecond)
				dec = json.NewDecoder(bufio.NewReader(noDelimiters{port}))
				continue
			}
			logf("guest agent request: %v", err)
			return
		}
		reply, delimited := answer(req)
		b, _ := json.Marshal(reply)
		if delimited {
			b = append([]byte{0xff}, b...)
		}
		if _, err := port.Write(append(b, '\n')); err != nil {
			logf("guest agent reply: %v", err)
			return
		}
	}
}

var supported = []string{"guest-sync", "guest-sync-delimited", "guest-ping", "guest-info", "guest-network-get-interfaces",
	"guest-fsfreeze-freeze", "guest-fsfreeze-freeze-list", "guest-fsfreeze-thaw", "guest-fsfreeze-status"}

// frozen is the filesystem freeze state guest-fsfreeze-* report. The
// guest runs from its initramfs: there is no filesystem to freeze; a
// freeze says it froze one (libvirt thaws only what was frozen) and is
// logged on the console, where a test sees that the host asked.
var frozen bool

func answer(req request) (reply any, delimited bool) {
	switch req.Execute {
	case "guest-sync", "guest-sync-delimited":
		var args struct {
			ID json.Number `json:"id"`
		}
		_ = json.Unmarshal(req.Arguments, &args)
		return map[string]any{"return": args.ID}, req.Execute == "guest-sync-delimited"
	case "guest-ping":
		return map[string]any{"return": map[string]any{}}, false
	case "guest-info":
		var cmds []map[string]any
		for _, c := range supported {
			cmds = append(cmds, map[string]any{"name": c, "enabled": true, "success-response": true})
		}
		return map[string]any{"return": map[string]any{"version": "7.2.0", "supported_commands": cmds}}, false
	case "guest-network-get-interfaces":
		return map[string]any{"return": interfaces()}, false
	case "guest-fsfreeze-freeze", "guest-fsfreeze-freeze-list":
		frozen = true
		logf("guestinit: filesystems frozen (%s)", req.Execute)
		return map[string]any{"return": 1}, false
	case "guest-fsfreeze-thaw":
		frozen = false
		logf("guestinit: filesystems thawed")
		return map[string]any{"return": 1}, false
	case "guest-fsfreeze-status":
		return map[string]any{"return": map[bool]string{true: "frozen", false: "thawed"}[frozen]}, false
	default:
		return map[string]any{"error": map[string]any{"class": "CommandNotFound",
			"desc": fmt.Sprintf("The command %s has not been found", req.Execute)}}, false
	}
}

// interfaces are the kernel's interfaces and addresses, as
// guest-network-get-interfaces reports them.
func interfaces() []map[string]any {
	ifaces, _ := net.Interfaces()
	out := []map[string]any{}
	for _, i := range ifaces {
		var ips []map[string]any
		addrs, _ := i.Addrs()
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			typ := "ipv6"
			if ipn.IP.To4() != nil {
				typ = "ipv4"
			}
			ones, _ := ipn.Mask.Size()
			ips = append(ips, map[string]any{"ip-address-type": typ, "ip-address": ipn.IP.String(), "prefix": ones})
		}
		mac := i.HardwareAddr.String()
		if mac == "" {
			mac = "00:00:00:00:00:00"
		}
		out = append(out, map[string]any{"name": i.Name, "hardware-address": mac, "ip-addresses": ips})
	}
	return out
}
