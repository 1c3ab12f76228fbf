package target

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode"

	"libvirt.org/go/libvirt"
)

// Defaults of Options for a job with verify_boot.
const (
	// DefaultBootTimeout bounds the wait for a started target VM's guest
	// to show it booted.
	DefaultBootTimeout = 5 * time.Minute
	// DefaultSerialLogDir is where the serial console of a target VM
	// whose boot is verified is logged, <dir>/<vm>.ferry-serial.log.
	DefaultSerialLogDir = "/var/log/libvirt/qemu"
)

// GuestAgentChannel is the virtio port the QEMU guest agent listens on.
const GuestAgentChannel = "org.qemu.guest_agent.0"

// bootPoll is how often WaitBoot looks for a sign of the guest.
const bootPoll = time.Second

// ErrNoBoot: the target VM did not show it booted within the bound.
var ErrNoBoot = errors.New("the target VM did not show it booted")

// serialLogPath is the file a VM's serial console is logged to.
func serialLogPath(o Options, s Spec) string {
	return filepath.Join(o.SerialLogDir, s.VM.GetVmName()+".ferry-serial.log")
}

// removeSerialLog removes the serial console's log of the spec's VM.
func removeSerialLog(o Options, s Spec) error {
	if err := os.Remove(serialLogPath(o, s)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove the serial console log: %w", err)
	}
	return nil
}

// leaseKey names one DHCP lease as it stood: a lease seen before the VM
// started does not prove the new guest asked for it (the source VM may
// hold a lease for the same MAC on the same network), one made or
// renewed after does.
type leaseKey struct {
	network, mac, ip string
	expiry           time.Time
}

// leases are the current DHCP leases of the spec's NICs on libvirt
// networks. A network whose leases cannot be read gives none.
func leases(conn *libvirt.Connect, s Spec) map[leaseKey]bool {
	nics, _ := s.nics()
	out := map[leaseKey]bool{}
	for _, n := range nics {
		if n.network == "" {
			continue
		}
		net, err := conn.LookupNetworkByName(n.network)
		if err != nil {
			continue
		}
		ls, _ := net.GetDHCPLeases()
		_ = net.Free()
		for _, l := range ls {
			if strings.EqualFold(l.Mac, n.mac) {
				out[leaseKey{n.network, n.mac, l.IPaddr, l.ExpiryTime}] = true
			}
		}
	}
	return out
}

// WaitBoot waits, up to timeout, for the started domain's guest to show
// it booted, and says how: the QEMU guest agent answering (libvirt's
// interface addresses, agent source), a DHCP lease for one of its NICs'
// MACs on a libvirt network that was not there before (before: the
// leases taken before the VM started), or a line of text on its serial
// console (logged to serialLog). None within timeout is ErrNoBoot, with
// what was looked for.
func WaitBoot(ctx context.Context, conn *libvirt.Connect, ld *libvirt.Domain, s Spec, serialLog string,
	before map[leaseKey]bool, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(bootPoll)
	defer tick.Stop()
	for {
		if line := consoleLine(serialLog); line != "" {
			return "serial console: " + line, nil
		}
		if _, err := ld.ListAllInterfaceAddresses(libvirt.DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT); err == nil {
			return "guest agent: it answered " + GuestAgentChannel, nil
		}
		for l := range leases(conn, s) {
			if !before[l] {
				return fmt.Sprintf("DHCP lease: %s for %s on network %s", l.ip, l.mac, l.network), nil
			}
		}
		if active, err := ld.IsActive(); err == nil && !active {
			return "", fmt.Errorf("%w: it stopped before it showed it booted (%s)", ErrNoBoot, nothingSeen(s))
		}
		if !time.Now().Before(deadline) {
			return "", fmt.Errorf("%w within %s: %s", ErrNoBoot, timeout, nothingSeen(s))
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-tick.C:
		}
	}
}

// nothingSeen says what WaitBoot looked for and did not see.
func nothingSeen(s Spec) string {
	var macs []string
	nics, _ := s.nics()
	for _, n := range nics {
		if n.network != "" {
			macs = append(macs, n.mac+" on "+n.network)
		}
	}
	lease := "no DHCP lease (no NIC on a libvirt network)"
	if len(macs) > 0 {
		lease = "no DHCP lease for " + strings.Join(macs, ", ")
	}
	return "no guest agent answer, " + lease + ", nothing on its serial console"
}

// maxProofLine is the most of a console line a proof quotes.
const maxProofLine = 120

// firmwareLines start what firmware (SeaBIOS, iPXE, OVMF and its shell)
// and boot loaders (GRUB, SYSLINUX) may print on the serial console of a
// guest whose operating system has not started: they prove nothing. A
// guest that got as far as GRUB's "Booting `Debian GNU/Linux'" may still
// fail to find its root disk.
var firmwareLines = []string{"SeaBIOS", "iPXE", "Booting from", "No bootable device", "Press ESC", "PXE", ">>",
	"BdsDxe", "UEFI Interactive Shell", "Shell>", "EFI Shell", "Mapping table", "FS0:", "BLK", "Press ", "Boot Failed",
	"Welcome to GRUB", "GNU GRUB", "Booting `", "Booting a command list", "Loading Linux", "Loading initial ramdisk",
	"error: ", "Use the ", "The highlighted entry", "Attempting Boot From", "ISOLINUX", "SYSLINUX", "boot:"}

// escapes are terminal control sequences (CSI ... final byte, or ESC and
// one character), as firmware draws its screens with.
var escapes = regexp.MustCompile(`\x1b(\[[0-?]*[ -/]*[@-~]|.)`)

// consoleLine is the first whole line (ended by a newline) of printable
// text the guest wrote on its serial console, terminal control sequences
// and firmware lines aside; "" while there is none.
func consoleLine(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	// Only whole lines: the guest may be writing the last one.
	data = data[:bytes.LastIndexByte(data, '\n')+1]
	for _, l := range bytes.Split(escapes.ReplaceAll(data, nil), []byte("\n")) {
		line := strings.TrimFunc(string(l), func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) })
		line = strings.Map(func(r rune) rune {
			if unicode.IsPrint(r) {
				return r
			}
			return -1
		}, line)
		if line == "" || slices.ContainsFunc(firmwareLines, func(p string) bool { return strings.HasPrefix(line, p) }) {
			continue
		}
		if len(line) > maxProofLine {
			line = line[:maxProofLine]
		}
		return line
	}
	return ""
}
