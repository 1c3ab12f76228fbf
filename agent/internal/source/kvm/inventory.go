package kvm

import (
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"strings"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"
)

// VM states that ListVMs reports.
const (
	StateRunning = "running"
	StatePaused  = "paused"
	StateShutOff = "shut off"
)

// Firmware types.
const (
	FirmwareBIOS = "bios"
	FirmwareUEFI = "uefi"
)

// OS types, when libvirt knows the guest's OS (libosinfo metadata).
const (
	OSLinux   = "linux"
	OSWindows = "windows"
)

// VM is a libvirt domain as the source describes it.
type VM struct {
	Name, UUID  string
	State       string // StateRunning, StatePaused, StateShutOff
	VCPUs       int
	MemoryBytes int64
	Firmware    Firmware
	CDROMs      int
	// OSType is OSLinux, OSWindows or "" when libvirt does not know;
	// OSName is the libosinfo id (http://ubuntu.com/ubuntu/22.04).
	OSType, OSName string
	Disks          []Disk
	NICs           []NIC
	// Machine is the machine type ("pc-q35-7.2"), CPUMode the <cpu> mode.
	Machine, CPUMode string
	CDROMList        []CDROM
}

// CDROM is a CD-ROM drive of a domain and the image it holds.
type CDROM struct {
	Target, Bus, Media string
}

// Firmware is how the domain boots.
type Firmware struct {
	Type string // FirmwareBIOS or FirmwareUEFI
	// Loader, NVRAM and its template are paths on the source host (UEFI).
	Loader, NVRAM, NVRAMTemplate string
	SecureBoot                   bool
}

// Disk is a disk (not a CD-ROM or floppy) of a domain.
type Disk struct {
	Target string // vda
	// Path is the file or block device, "rbd:pool/image" for Ceph,
	// "pool/volume" for a storage pool volume.
	Path            string
	Format          string // qcow2, raw
	Bus             string // virtio, scsi, sata, ide
	BootOrder       int    // <boot order>, 0 when none
	CapacityBytes   int64
	AllocationBytes int64
	ReadOnly        bool
}

// NIC is a network interface of a domain.
type NIC struct {
	MAC     string
	Type    string // network, bridge, direct, user...
	Network string // libvirt network, for type network
	Bridge  string // host bridge (also the network's bridge when running)
	Model   string // virtio, e1000...
	// IPs are the guest's addresses on the NIC, as its QEMU guest agent
	// reports them, else as the DHCP leases of its libvirt network do;
	// none when neither knows (the VM is not running, has no agent and no
	// lease).
	IPs []string
}

// ListVMs returns the running, paused and shut-off domains of the source
// (a shut-off one is migrated cold, see ColdExport).
func (c *Conn) ListVMs(ctx context.Context) ([]*VM, error) {
	doms, err := c.virt.ListAllDomains(libvirt.CONNECT_LIST_DOMAINS_RUNNING | libvirt.CONNECT_LIST_DOMAINS_PAUSED |
		libvirt.CONNECT_LIST_DOMAINS_SHUTOFF)
	if err != nil {
		return nil, fmt.Errorf("list domains of source %s: %w", c.cfg.hostPort(), err)
	}
	defer func() {
		for i := range doms {
			doms[i].Free()
		}
	}()
	// Described in two passes: the images of all running VMs are sized
	// in one command (imageSizes) between them.
	type described struct {
		dom   *libvirt.Domain
		vm    *VM
		state libvirt.DomainState
	}
	var all []described
	var running []Disk
	skip := func(dom *libvirt.Domain, err error) {
		if isNoDomain(err) {
			return // gone meanwhile
		}
		// A domain that stops while it is described (its monitor goes
		// away) must not hide the others; a job on it reports the error
		// itself.
		name, _ := dom.GetName()
		c.log.Warn("leaving a VM out of the inventory", "vm", name, "err", err)
	}
	for i := range doms {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		vm, state, err := c.parse(&doms[i])
		if err != nil {
			skip(&doms[i], err)
			continue
		}
		all = append(all, described{&doms[i], vm, state})
		if state != libvirt.DOMAIN_SHUTOFF {
			running = append(running, vm.Disks...)
		}
	}
	sized := c.imageSizes(ctx, running)
	var vms []*VM
	for _, d := range all {
		if err := c.finish(d.dom, d.vm, sized); err != nil {
			skip(d.dom, err)
			continue
		}
		vms = append(vms, d.vm)
	}
	return vms, nil
}

// DescribeVM returns one domain, whatever its state.
func (c *Conn) DescribeVM(ctx context.Context, name string) (*VM, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	dom, err := c.domain(name)
	if err != nil {
		return nil, err
	}
	defer dom.Free()
	return c.describe(ctx, dom)
}

// describe reads a domain's XML, state and disk sizes.
func (c *Conn) describe(ctx context.Context, dom *libvirt.Domain) (*VM, error) {
	vm, state, err := c.parse(dom)
	if err != nil {
		return nil, err
	}
	var sized map[string]imageSize
	if state != libvirt.DOMAIN_SHUTOFF {
		sized = c.imageSizes(ctx, vm.Disks)
	}
	if err := c.finish(dom, vm, sized); err != nil {
		return nil, err
	}
	return vm, nil
}

// parse reads a domain's XML and state.
func (c *Conn) parse(dom *libvirt.Domain) (*VM, libvirt.DomainState, error) {
	desc, err := dom.GetXMLDesc(0)
	if err != nil {
		return nil, 0, fmt.Errorf("domain XML: %w", err)
	}
	vm, err := parseDomain(desc)
	if err != nil {
		return nil, 0, err
	}
	state, _, err := dom.GetState()
	if err != nil {
		return nil, 0, fmt.Errorf("state of VM %s: %w", vm.Name, err)
	}
	vm.State = stateName(state)
	return vm, state, nil
}

// finish sizes the domain's disks, from sized (imageSizes) where it has
// them, else from libvirt (which reads a stopped VM's images itself, and
// asks a running one's QEMU: the hazard imageSizes avoids), and reads the
// guest's addresses.
func (c *Conn) finish(dom *libvirt.Domain, vm *VM, sized map[string]imageSize) error {
	for i := range vm.Disks {
		d := &vm.Disks[i]
		if sz, ok := sized[d.Path]; ok {
			d.CapacityBytes, d.AllocationBytes = sz.Virtual, sz.Actual
			continue
		}
		info, err := dom.GetBlockInfo(d.Target, 0)
		if err != nil {
			return fmt.Errorf("size of disk %s of VM %s: %w", d.Target, vm.Name, err)
		}
		d.CapacityBytes, d.AllocationBytes = int64(info.Capacity), int64(info.Allocation)
	}
	c.guestAddresses(dom, vm)
	return nil
}

// imageSize is what qemu-img info says of an image's sizes.
type imageSize struct {
	Virtual int64 `json:"virtual-size"`
	Actual  int64 `json:"actual-size"`
}

// imageSizes reads the sizes of the disks' images of a running VM from
// the images themselves (qemu-img info -U over SSH, one command for all),
// not from its QEMU: libvirt answers virDomainGetBlockInfo of a running
// VM with query-named-block-nodes, and QEMU 7.2 (Debian 12's) aborts on
// it while a backup is being set up (qcow2_get_specific_info: Assertion
// `false' failed, with the scratch image half open): a VM crashed in 14
// backups begun with domblkinfo beside them, so an inventory beside a
// migration, Ferry's or any other tool's, could kill the VM it lists.
// Images it cannot read (no SSH, Ceph, an image the user may not read)
// are left out, and their disks sized by libvirt as before.
func (c *Conn) imageSizes(ctx context.Context, disks []Disk) map[string]imageSize {
	if c.ssh == nil {
		return nil
	}
	var paths []string
	for _, d := range disks {
		if d.Path != "" && strings.HasPrefix(d.Path, "/") {
			paths = append(paths, d.Path)
		}
	}
	if len(paths) == 0 {
		return nil
	}
	cmd := "for p in"
	for _, p := range paths {
		cmd += " " + shellQuote(p)
	}
	cmd += `; do qemu-img info -U --output=json -- "$p" 2>/dev/null | tr -d '\n' || true; echo; done`
	out, err := runRemote(ctx, c.ssh, cmd)
	if err != nil {
		c.log.Debug("image sizes not read on the source; libvirt's are used", "err", err)
		return nil
	}
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	sizes := map[string]imageSize{}
	for i, p := range paths {
		var sz imageSize
		if i >= len(lines) || json.Unmarshal([]byte(lines[i]), &sz) != nil || sz.Virtual <= 0 {
			continue
		}
		sizes[p] = sz
	}
	return sizes
}

// guestAddresses fills the NICs' guest addresses (virDomainInterfaceAddresses):
// from the QEMU guest agent of a running VM, else from the DHCP leases of
// the libvirt networks it is on. Not knowing them is no error: the VM is
// listed without.
func (c *Conn) guestAddresses(dom *libvirt.Domain, vm *VM) {
	if len(vm.NICs) == 0 || vm.State != StateRunning && vm.State != StatePaused {
		return
	}
	var ifaces []libvirt.DomainInterface
	var err error
	if vm.State == StateRunning { // a paused guest's agent cannot answer
		ifaces, err = dom.ListAllInterfaceAddresses(libvirt.DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT)
	}
	if vm.State != StateRunning || err != nil || len(ifaces) == 0 {
		if err != nil {
			c.log.Debug("no guest addresses from the guest agent; reading DHCP leases", "vm", vm.Name, "err", err)
		}
		if ifaces, err = dom.ListAllInterfaceAddresses(libvirt.DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE); err != nil {
			c.log.Debug("no guest addresses from DHCP leases", "vm", vm.Name, "err", err)
			return
		}
	}
	setGuestAddresses(vm.NICs, ifaces)
}

// setGuestAddresses gives each NIC the addresses of the interface with its MAC.
func setGuestAddresses(nics []NIC, ifaces []libvirt.DomainInterface) {
	for i := range nics {
		for _, ifc := range ifaces {
			if !strings.EqualFold(ifc.Hwaddr, nics[i].MAC) {
				continue
			}
			for _, a := range ifc.Addrs {
				nics[i].IPs = append(nics[i].IPs, a.Addr)
			}
		}
	}
}

func stateName(s libvirt.DomainState) string {
	switch s {
	case libvirt.DOMAIN_RUNNING:
		return StateRunning
	case libvirt.DOMAIN_PAUSED, libvirt.DOMAIN_PMSUSPENDED:
		return StatePaused
	case libvirt.DOMAIN_SHUTOFF:
		return StateShutOff
	default:
		return fmt.Sprintf("state %d", s)
	}
}

func isNoDomain(err error) bool {
	var lerr libvirt.Error
	return errors.As(err, &lerr) && lerr.Code == libvirt.ERR_NO_DOMAIN
}

// parseDomain turns a domain's XML into a VM without sizes or state.
func parseDomain(desc string) (*VM, error) {
	var d libvirtxml.Domain
	if err := d.Unmarshal(desc); err != nil {
		return nil, fmt.Errorf("parse domain XML: %w", err)
	}
	vm := &VM{Name: d.Name, UUID: d.UUID, Firmware: firmware(d.OS)}
	if d.OS != nil && d.OS.Type != nil {
		vm.Machine = d.OS.Type.Machine
	}
	if d.CPU != nil {
		vm.CPUMode = d.CPU.Mode
	}
	if d.VCPU != nil {
		vm.VCPUs = int(d.VCPU.Value)
		if d.VCPU.Current != 0 {
			vm.VCPUs = int(d.VCPU.Current)
		}
	}
	if d.Memory != nil {
		n, err := memoryBytes(uint64(d.Memory.Value), d.Memory.Unit)
		if err != nil {
			return nil, fmt.Errorf("VM %s memory: %w", d.Name, err)
		}
		vm.MemoryBytes = n
	}
	if d.Metadata != nil {
		vm.OSName = libosinfoID(d.Metadata.XML)
		vm.OSType = osType(vm.OSName)
	}
	if d.Devices != nil {
		for _, disk := range d.Devices.Disks {
			switch disk.Device {
			case "cdrom":
				vm.CDROMs++
				cd := diskOf(disk)
				vm.CDROMList = append(vm.CDROMList, CDROM{Target: cd.Target, Bus: cd.Bus, Media: cd.Path})
			case "", "disk", "lun":
				vm.Disks = append(vm.Disks, diskOf(disk))
			}
		}
		for _, ifc := range d.Devices.Interfaces {
			vm.NICs = append(vm.NICs, nicOf(ifc))
		}
	}
	return vm, nil
}

func firmware(os *libvirtxml.DomainOS) Firmware {
	fw := Firmware{Type: FirmwareBIOS}
	if os == nil {
		return fw
	}
	if os.Firmware == "efi" || (os.Loader != nil && os.Loader.Type == "pflash") || os.NVRam != nil {
		fw.Type = FirmwareUEFI
	}
	if os.Loader != nil {
		fw.Loader = strings.TrimSpace(os.Loader.Path)
		fw.SecureBoot = os.Loader.Secure == "yes"
	}
	if os.NVRam != nil {
		fw.NVRAM, fw.NVRAMTemplate = strings.TrimSpace(os.NVRam.NVRam), os.NVRam.Template
		if src := os.NVRam.Source; fw.NVRAM == "" && src != nil && src.File != nil {
			fw.NVRAM = src.File.File
		}
	}
	return fw
}

func diskOf(disk libvirtxml.DomainDisk) Disk {
	d := Disk{ReadOnly: disk.ReadOnly != nil}
	if disk.Boot != nil {
		d.BootOrder = int(disk.Boot.Order)
	}
	if disk.Target != nil {
		d.Target, d.Bus = disk.Target.Dev, disk.Target.Bus
	}
	if disk.Driver != nil {
		d.Format = disk.Driver.Type
	}
	if src := disk.Source; src != nil {
		switch {
		case src.File != nil:
			d.Path = src.File.File
		case src.Block != nil:
			d.Path = src.Block.Dev
		case src.Network != nil && src.Network.Protocol == "rbd":
			d.Path = "rbd:" + src.Network.Name
		case src.Network != nil:
			d.Path = src.Network.Protocol + ":" + src.Network.Name
		case src.Volume != nil:
			d.Path = src.Volume.Pool + "/" + src.Volume.Volume
		}
	}
	return d
}

func nicOf(ifc libvirtxml.DomainInterface) NIC {
	var n NIC
	if ifc.MAC != nil {
		n.MAC = strings.ToLower(ifc.MAC.Address)
	}
	if ifc.Model != nil {
		n.Model = ifc.Model.Type
	}
	if src := ifc.Source; src != nil {
		switch {
		case src.Network != nil:
			n.Type, n.Network, n.Bridge = "network", src.Network.Network, src.Network.Bridge
		case src.Bridge != nil:
			n.Type, n.Bridge = "bridge", src.Bridge.Bridge
		case src.Direct != nil:
			n.Type, n.Bridge = "direct", src.Direct.Dev
		case src.User != nil:
			n.Type = "user"
		}
	}
	return n
}

var memoryUnits = map[string]uint64{
	"b": 1, "bytes": 1,
	"KB": 1000, "k": 1 << 10, "KiB": 1 << 10, "": 1 << 10,
	"MB": 1000 * 1000, "M": 1 << 20, "MiB": 1 << 20,
	"GB": 1000 * 1000 * 1000, "G": 1 << 30, "GiB": 1 << 30,
	"TB": 1000 * 1000 * 1000 * 1000, "T": 1 << 40, "TiB": 1 << 40,
}

// memoryBytes converts a libvirt memory amount; the default unit is KiB.
func memoryBytes(value uint64, unit string) (int64, error) {
	s, ok := memoryUnits[unit]
	if !ok {
		return 0, fmt.Errorf("unknown unit %q", unit)
	}
	return int64(value * s), nil
}

// libosinfoNS is the namespace of virt-install's OS metadata.
const libosinfoNS = "http://libosinfo.org/xmlns/libvirt/domain/1.0"

// libosinfoID returns the <libosinfo:os id='...'/> of a domain's
// metadata, or "".
func libosinfoID(metadata string) string {
	dec := xml.NewDecoder(strings.NewReader(metadata))
	for {
		tok, err := dec.Token()
		if err != nil { // io.EOF included
			return ""
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Space == libosinfoNS && se.Name.Local == "os" {
			for _, a := range se.Attr {
				if a.Name.Local == "id" {
					return a.Value
				}
			}
		}
	}
}

// osType maps a libosinfo id to OSWindows, OSLinux or "".
func osType(id string) string {
	switch {
	case id == "" || strings.HasSuffix(id, "libosinfo.org/unknown"):
		return ""
	case strings.Contains(id, "microsoft.com/win"):
		return OSWindows
	case strings.Contains(id, "/freebsd") || strings.Contains(id, "/openbsd") ||
		strings.Contains(id, "/netbsd") || strings.Contains(id, "/solaris"):
		return ""
	default:
		// libosinfo's other vendors (ubuntu.com, redhat.com, debian.org,
		// suse.com, archlinux.org, ...) ship Linux.
		return OSLinux
	}
}
