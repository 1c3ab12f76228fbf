// Package targetspec completes a migration job's target VM from what the
// source says of the VM. It is the one place the defaults live: the
// coordinator fills incomplete specs of CreateMigrationJobs with it, and
// ferryctl fills a job made from flags with it before it asks to confirm.
//
// What a spec sets is kept; what it leaves out becomes:
//
//   - vm_name: the source VM's name;
//   - cpus, memory_bytes: the source's;
//   - firmware: the source's (EFI stays UEFI, else BIOS);
//   - os_type: the source's, else the platform its guest OS id names
//     (VMware guestId or libosinfo id): Windows, else Linux. WindowsVirtio
//     (virtio drivers installed) is only ever asked for;
//   - disk_bus: DiskBus of the OS type: virtio-scsi for Linux and
//     WindowsVirtio, SATA for Windows, which has no virtio driver;
//   - cdrom_count: as many as the source has, at most MaxCDROMs;
//   - disks: every source disk, in order, the first one the root;
//   - nics: one per source NIC, on the L3 network the network-mapping
//     group gives its portgroup or network (else Options.Network), its
//     MAC kept (mac left empty means source_mac);
//   - with options.use_source_nic_address, each NIC gets the source MAC
//     and, without an ip, its source NIC's guest address (as VMware Tools,
//     the QEMU guest agent or a DHCP lease of a libvirt network report
//     it): the one inside the L3 network's range when Options.Networks are
//     given. A NIC whose guest address is unknown, or outside the range,
//     is left without ip, so the coordinator allocates one from the range,
//     and Fill's notes say so.
package targetspec

import (
	"fmt"
	"net/netip"
	"strings"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// MaxCDROMs is the most CD-ROM drives a target VM gets.
const MaxCDROMs = 3

// Options are what the spec is filled with besides the source VM.
type Options struct {
	// Group maps source networks to L3 networks; nil maps none.
	Group *ferryv1.NetworkMappingGroup
	// Network is the L3 network (l3Networks/{id}) of NICs the group does
	// not map; empty: such a NIC is an error.
	Network string
	// Networks are the L3 networks NICs may land on, to pick a source
	// address inside a network's range; nil: the first address of the
	// NIC's IP version.
	Networks []*ferryv1.L3Network
}

// Error is a spec that cannot be filled: Field is the path inside the
// MigrationJobSpec ("target.nics[1].l3_network").
type Error struct {
	Field, Reason string
}

func (e *Error) Error() string { return e.Field + ": " + e.Reason }

// Incomplete reports whether spec leaves out something Fill would supply
// from the source VM, or asks for source addresses.
func Incomplete(spec *ferryv1.MigrationJobSpec) bool {
	t := spec.GetTarget()
	return t.GetVmName() == "" || t.GetCpus() == 0 || t.GetMemoryBytes() == 0 || len(t.GetDisks()) == 0 ||
		len(t.GetNics()) == 0 || spec.GetOptions().GetUseSourceNicAddress()
}

// Fill completes spec from vm. spec.Target is created when nil. The notes
// say what Fill could not take from the source and left to the
// coordinator (a NIC whose source address is unknown or outside the
// range: target.nics[1].ip: …), one line each.
func Fill(spec *ferryv1.MigrationJobSpec, vm *ferryv1.SourceVm, o Options) (notes []string, err error) {
	if spec.Target == nil {
		spec.Target = &ferryv1.TargetVm{}
	}
	t := spec.Target
	if t.VmName == "" {
		t.VmName = strings.ReplaceAll(vm.GetName(), "/", "-")
	}
	if t.Cpus == 0 {
		t.Cpus = vm.GetCpus()
	}
	if t.MemoryBytes == 0 {
		t.MemoryBytes = vm.GetMemoryBytes()
	}
	if t.Firmware == ferryv1.Firmware_FIRMWARE_UNSPECIFIED {
		t.Firmware = vm.GetFirmware()
	}
	if t.OsType == ferryv1.OsType_OS_TYPE_UNSPECIFIED {
		t.OsType = Platform(vm)
	}
	if t.DiskBus == ferryv1.DiskBus_DISK_BUS_UNSPECIFIED {
		t.DiskBus = DiskBus(t.OsType)
	}
	if t.CdromCount == 0 {
		t.CdromCount = min(vm.GetCdromCount(), MaxCDROMs)
	}
	if len(t.Disks) == 0 {
		for i, d := range vm.GetDisks() {
			name := "data-" + d.GetTarget()
			if i == 0 {
				name = "root"
			}
			t.Disks = append(t.Disks, &ferryv1.TargetDisk{SourceDisk: d.GetTarget(), DisplayName: name, SizeBytes: d.GetCapacityBytes()})
		}
	}
	if len(t.Nics) == 0 {
		for i, n := range vm.GetNics() {
			l3, err := o.network(n)
			if err != nil {
				return nil, &Error{Field: fmt.Sprintf("target.nics[%d].l3_network", i), Reason: err.Error()}
			}
			t.Nics = append(t.Nics, &ferryv1.TargetNic{SourceMac: n.GetMac(), L3Network: l3})
		}
	}
	if spec.GetOptions().GetUseSourceNicAddress() {
		return o.sourceAddresses(t, vm)
	}
	return nil, nil
}

// network is the L3 network a source NIC lands on.
func (o Options) network(n *ferryv1.SourceNic) (string, error) {
	keys := []string{n.GetPortgroup(), n.GetNetwork(), n.GetBridge()}
	for _, m := range o.Group.GetMappings() {
		for _, k := range keys {
			if k != "" && m.GetSourceNetwork() == k {
				return m.GetL3Network(), nil
			}
		}
	}
	if o.Network != "" {
		return o.Network, nil
	}
	on := strings.Join(nonEmpty(keys), ", ")
	if on == "" {
		on = "no network the source reports"
	}
	if o.Group == nil {
		return "", fmt.Errorf("source NIC %s is on %s; name a network-mapping group that maps it, or an L3 network", n.GetMac(), on)
	}
	return "", fmt.Errorf("source NIC %s is on %s, which %s does not map; add a mapping to the group", n.GetMac(), on, o.Group.GetName())
}

// sourceAddresses gives each NIC its source MAC and, when it has no ip,
// its source NIC's guest address; a NIC whose address is not known or
// not inside its L3 network's range is left without one, to be allocated
// from the range, and a note says so.
func (o Options) sourceAddresses(t *ferryv1.TargetVm, vm *ferryv1.SourceVm) ([]string, error) {
	var notes []string
	for i, n := range t.Nics {
		field := fmt.Sprintf("target.nics[%d]", i)
		var src *ferryv1.SourceNic
		for _, s := range vm.GetNics() {
			if strings.EqualFold(s.GetMac(), n.GetSourceMac()) {
				src = s
			}
		}
		if src == nil {
			return notes, &Error{Field: field + ".source_mac", Reason: fmt.Sprintf("VM %s has no NIC %q to take the address of (options.use_source_nic_address)",
				vm.GetName(), n.GetSourceMac())}
		}
		if n.Mac == "" {
			n.Mac = src.GetMac()
		}
		if n.Ip != "" {
			continue
		}
		ip, why := o.pickAddress(src, n.GetL3Network())
		if ip == "" {
			notes = append(notes, fmt.Sprintf("%s.ip: %s; an address from the range of %s is allocated instead (options.use_source_nic_address)",
				field, why, n.GetL3Network()))
			continue
		}
		n.Ip = ip
	}
	return notes, nil
}

// pickAddress is the source NIC's guest address inside the L3 network's
// range, or its first address when the network is not known here. When
// there is none it returns "" and why.
func (o Options) pickAddress(src *ferryv1.SourceNic, network string) (ip, why string) {
	var l3 *ferryv1.L3Network
	for _, n := range o.Networks {
		if n.GetName() == network {
			l3 = n
		}
	}
	var addrs []netip.Addr
	for _, s := range src.GetIpAddresses() {
		a, err := netip.ParseAddr(strings.SplitN(s, "/", 2)[0])
		if err == nil && !a.IsLinkLocalUnicast() && !a.IsLoopback() {
			addrs = append(addrs, a.Unmap())
		}
	}
	if len(addrs) == 0 {
		return "", fmt.Sprintf("source NIC %s reports no guest address (no VMware Tools or QEMU guest agent running, no DHCP lease)", src.GetMac())
	}
	if l3 == nil {
		return addrs[0].String(), ""
	}
	start, err1 := netip.ParseAddr(l3.GetIpRangeStart())
	end, err2 := netip.ParseAddr(l3.GetIpRangeEnd())
	if err1 == nil && err2 == nil {
		for _, a := range addrs {
			if a.BitLen() == start.BitLen() && !a.Less(start) && !end.Less(a) {
				return a.String(), ""
			}
		}
	}
	return "", fmt.Sprintf("source NIC %s has %s, none inside the range %s-%s of %s", src.GetMac(),
		strings.Join(src.GetIpAddresses(), ", "), l3.GetIpRangeStart(), l3.GetIpRangeEnd(), l3.GetName())
}

func nonEmpty(ss []string) []string {
	var out []string
	for _, s := range ss {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}
