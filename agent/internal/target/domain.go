package target

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"libvirt.org/go/libvirtxml"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/targetspec"
)

// MaxCDROMs is the most CD-ROM drives a target VM gets.
const MaxCDROMs = 3

// ErrBadSpec: the job's target VM cannot be built as asked.
var ErrBadSpec = errors.New("bad target VM")

// Spec is what the target VM is made of.
type Spec struct {
	// JobID is the job's resource name (or ID). It is written into the
	// domain's metadata; Rollback undefines only a domain that carries it.
	JobID string
	VM    *ferryv1.TargetVm
	// Source is what the source said about the VM; its firmware and OS
	// type fill what VM leaves unspecified. May be nil.
	Source *ferryv1.SourceVm
	// Volumes holds the volume of each of VM.Disks, in the same order
	// (root first).
	Volumes []Volume
	// Networks resolves the NICs' l3_network names.
	Networks []*ferryv1.L3Network
	// NVRAM is the source VM's UEFI variable store. Empty: the new VM
	// starts from the firmware's template.
	NVRAM []byte
	// AutoStart starts the VM once defined; see AutoStart.
	AutoStart bool
	// VerifyBoot starts the VM once defined and waits for the guest to
	// show it booted (options.verify_boot; see WaitBoot). The domain gets
	// a guest agent channel and its serial console is logged to a file.
	VerifyBoot bool
	// DeferStart defines the VM without starting it, whatever AutoStart
	// and VerifyBoot say; StartDefined starts it later (as they say).
	DeferStart bool
}

// AutoStart is a job's auto-start option: on unless set to false.
func AutoStart(o *ferryv1.MigrationOptions) bool {
	return o == nil || o.AutoStart == nil || o.GetAutoStart()
}

// firmware is the job's firmware: the target's, else the source's, else BIOS.
func (s Spec) firmware() ferryv1.Firmware {
	if f := s.VM.GetFirmware(); f != ferryv1.Firmware_FIRMWARE_UNSPECIFIED {
		return f
	}
	if f := s.Source.GetFirmware(); f != ferryv1.Firmware_FIRMWARE_UNSPECIFIED {
		return f
	}
	return ferryv1.Firmware_FIRMWARE_BIOS
}

// osType is the target's OS type, else the source's platform
// (targetspec.Platform: its os_type, else its guest OS id, else Linux).
func (s Spec) osType() ferryv1.OsType {
	if o := s.VM.GetOsType(); o != ferryv1.OsType_OS_TYPE_UNSPECIFIED {
		return o
	}
	return targetspec.Platform(s.Source)
}

// clock is the guest clock's offset: Windows (with or without virtio
// drivers) keeps local time in the RTC, Linux UTC.
func (s Spec) clock() string {
	if targetspec.IsWindows(s.osType()) {
		return "localtime"
	}
	return "utc"
}

// nic is a TargetNic resolved against its L3 network.
type nic struct {
	mac     string
	ip      string
	network string // libvirt network, or
	bridge  string
}

// nics resolves the job's NICs; at least one is required.
func (s Spec) nics() ([]nic, error) {
	if len(s.VM.GetNics()) == 0 {
		return nil, fmt.Errorf("%w: no NICs", ErrBadSpec)
	}
	out := make([]nic, 0, len(s.VM.GetNics()))
	for i, n := range s.VM.GetNics() {
		mac := n.GetMac()
		if mac == "" {
			mac = n.GetSourceMac()
		}
		hw, err := net.ParseMAC(mac)
		if err != nil || len(hw) != 6 {
			return nil, fmt.Errorf("%w: nics[%d]: bad MAC %q", ErrBadSpec, i, mac)
		}
		var l3 *ferryv1.L3Network
		for _, cand := range s.Networks {
			if cand.GetName() == n.GetL3Network() {
				l3 = cand
			}
		}
		if l3 == nil || (l3.GetLibvirtNetwork() == "") == (l3.GetBridge() == "") {
			return nil, fmt.Errorf("%w: nics[%d]: L3 network %q unknown or without exactly one of libvirt network and bridge",
				ErrBadSpec, i, n.GetL3Network())
		}
		out = append(out, nic{mac: hw.String(), ip: n.GetIp(), network: l3.GetLibvirtNetwork(), bridge: l3.GetBridge()})
	}
	return out, nil
}

// Firmware is the UEFI firmware chosen for a domain. Empty paths let
// libvirt pick a firmware itself (<os firmware='efi'>).
type Firmware struct {
	Code, VarsTemplate string
}

// BuildOptions are the host's side of a domain.
type BuildOptions struct {
	// Type is "kvm" or "qemu".
	Type string
	// UEFI is the firmware for a UEFI VM; NVRAMPath its variable store.
	UEFI      Firmware
	NVRAMPath string
	// CephUser and CephSecretUUID authenticate RBD disks (a libvirt
	// secret of usage type ceph); empty: no <auth>, QEMU uses ceph.conf.
	CephUser, CephSecretUUID string
	// SerialLog, when set, is the file the serial console's output is
	// also written to (the guest's proof of boot).
	SerialLog string
}

// BuildDomain is the libvirt domain of a spec.
func BuildDomain(s Spec, o BuildOptions) (*libvirtxml.Domain, error) {
	vm := s.VM
	switch {
	case vm.GetVmName() == "" || strings.Contains(vm.GetVmName(), "/"):
		return nil, fmt.Errorf("%w: vm_name %q", ErrBadSpec, vm.GetVmName())
	case vm.GetCpus() <= 0 || vm.GetMemoryBytes() <= 0:
		return nil, fmt.Errorf("%w: cpus %d, memory %d bytes", ErrBadSpec, vm.GetCpus(), vm.GetMemoryBytes())
	case len(vm.GetDisks()) == 0 || len(vm.GetDisks()) != len(s.Volumes):
		return nil, fmt.Errorf("%w: %d disks and %d volumes", ErrBadSpec, len(vm.GetDisks()), len(s.Volumes))
	}
	nics, err := s.nics()
	if err != nil {
		return nil, err
	}
	names := map[string]int{}
	disks, meta := s.disks(o, names)
	dom := &libvirtxml.Domain{
		Type:     o.Type,
		Name:     vm.GetVmName(),
		Metadata: &libvirtxml.DomainMetadata{XML: meta.String()},
		Memory:   &libvirtxml.DomainMemory{Value: uint((vm.GetMemoryBytes() + 1023) / 1024), Unit: "KiB"},
		VCPU:     &libvirtxml.DomainVCPU{Placement: "static", Value: uint(vm.GetCpus())},
		OS:       s.osSection(o),
		Features: &libvirtxml.DomainFeatureList{ACPI: &libvirtxml.DomainFeature{}, APIC: &libvirtxml.DomainFeatureAPIC{}},
		Clock:    &libvirtxml.DomainClock{Offset: s.clock()},
		Devices:  &libvirtxml.DomainDeviceList{Disks: append(disks, cdroms(int(vm.GetCdromCount()), s.cdromBus(), names)...)},
		CPU:      s.cpu(o.Type),
	}
	for i := range vm.GetDisks() {
		if s.bus(i) == ferryv1.DiskBus_DISK_BUS_VIRTIO_SCSI {
			zero := uint(0)
			dom.Devices.Controllers = []libvirtxml.DomainController{{Type: "scsi", Index: &zero, Model: "virtio-scsi"}}
			break
		}
	}
	if s.q35() {
		for i := range vm.GetDisks() {
			if s.bus(i) == ferryv1.DiskBus_DISK_BUS_IDE {
				return nil, fmt.Errorf("%w: disks[%d]: IDE on a q35 machine, which has no IDE controller", ErrBadSpec, i)
			}
		}
	}
	dom.Devices.Interfaces = interfaces(nics, s.nicModel)
	operatorDevices(dom.Devices)
	if o.SerialLog != "" {
		dom.Devices.Serials[0].Log = &libvirtxml.DomainChardevLog{File: o.SerialLog, Append: "off"}
	}
	if s.VerifyBoot {
		dom.Devices.Channels = []libvirtxml.DomainChannel{{
			Source: &libvirtxml.DomainChardevSource{UNIX: &libvirtxml.DomainChardevSourceUNIX{}},
			Target: &libvirtxml.DomainChannelTarget{VirtIO: &libvirtxml.DomainChannelTargetVirtIO{Name: GuestAgentChannel}},
		}}
	}
	return dom, nil
}

// osSection is <os>: hvm on the machine family, BIOS or UEFI.
func (s Spec) osSection(o BuildOptions) *libvirtxml.DomainOS {
	os := &libvirtxml.DomainOS{Type: &libvirtxml.DomainOSType{Arch: "x86_64", Machine: s.machine(), Type: "hvm"}}
	if s.firmware() != ferryv1.Firmware_FIRMWARE_UEFI {
		return os
	}
	if o.UEFI.Code == "" {
		os.Firmware = "efi"
	} else {
		os.Loader = &libvirtxml.DomainLoader{Path: o.UEFI.Code, Readonly: "yes", Type: "pflash"}
	}
	if o.NVRAMPath != "" {
		os.NVRam = &libvirtxml.DomainNVRam{NVRam: o.NVRAMPath, Template: o.UEFI.VarsTemplate}
	}
	return os
}

// disks are the VM's disks, in the job's order (root first), each on its
// bus (names counted per prefix: vd, sd, hd), the boot disk with boot
// order 1, and the metadata naming them. names counts the device names
// used per prefix, for the CD-ROMs after them.
func (s Spec) disks(o BuildOptions, names map[string]int) ([]libvirtxml.DomainDisk, Metadata) {
	meta := Metadata{Job: s.JobID}
	boot := s.bootDisk()
	out := make([]libvirtxml.DomainDisk, 0, len(s.Volumes))
	for i, vol := range s.Volumes {
		td := s.VM.GetDisks()[i]
		bus, prefix := busNames(s.bus(i))
		d := libvirtxml.DomainDisk{
			Device: "disk",
			Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: vol.Format, Discard: "unmap"},
			Source: diskSource(vol, o),
			Target: &libvirtxml.DomainDiskTarget{Dev: DeviceName(prefix, names[prefix]), Bus: bus},
		}
		names[prefix]++
		if vol.BlockDevice() {
			d.Driver.Cache, d.Driver.IO = "none", "native"
		}
		if i == boot {
			d.Boot = &libvirtxml.DomainDeviceBoot{Order: 1}
		}
		out = append(out, d)
		meta.Disks = append(meta.Disks, MetadataDisk{Target: d.Target.Dev, SourceDisk: td.GetSourceDisk(), DisplayName: td.GetDisplayName()})
	}
	return out, meta
}

// diskSource is a qcow2 file, a raw block device or an RBD network disk.
func diskSource(vol Volume, o BuildOptions) *libvirtxml.DomainDiskSource {
	switch {
	case vol.BlockDevice():
		return &libvirtxml.DomainDiskSource{Block: &libvirtxml.DomainDiskSourceBlock{Dev: vol.Path}}
	case vol.Pool != "":
		n := &libvirtxml.DomainDiskSourceNetwork{Protocol: "rbd", Name: vol.Pool + "/" + vol.Image}
		if o.CephUser != "" {
			n.Auth = &libvirtxml.DomainDiskAuth{Username: o.CephUser,
				Secret: &libvirtxml.DomainDiskSecret{Type: "ceph", UUID: o.CephSecretUUID}}
		}
		return &libvirtxml.DomainDiskSource{Network: n}
	default:
		return &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: vol.Path}}
	}
}

// cdroms are n empty CD-ROM drives on bus, at most MaxCDROMs, named
// after the disks already on their prefix.
func cdroms(n int, bus string, names map[string]int) []libvirtxml.DomainDisk {
	n = min(max(n, 0), MaxCDROMs)
	prefix := "sd"
	if bus == "ide" {
		prefix = "hd"
	}
	out := make([]libvirtxml.DomainDisk, 0, n)
	for range n {
		out = append(out, libvirtxml.DomainDisk{
			Device:   "cdrom",
			Driver:   &libvirtxml.DomainDiskDriver{Name: "qemu", Type: FormatRaw},
			Target:   &libvirtxml.DomainDiskTarget{Dev: DeviceName(prefix, names[prefix]), Bus: bus},
			ReadOnly: &libvirtxml.DomainDiskReadOnly{},
		})
		names[prefix]++
	}
	return out
}

// interfaces are the NICs, each of its model (Spec.nicModel), on
// libvirt networks or bridges.
func interfaces(nics []nic, model func(int) string) []libvirtxml.DomainInterface {
	out := make([]libvirtxml.DomainInterface, 0, len(nics))
	for i, n := range nics {
		src := &libvirtxml.DomainInterfaceSource{}
		if n.network != "" {
			src.Network = &libvirtxml.DomainInterfaceSourceNetwork{Network: n.network}
		} else {
			src.Bridge = &libvirtxml.DomainInterfaceSourceBridge{Bridge: n.bridge}
		}
		out = append(out, libvirtxml.DomainInterface{
			MAC:    &libvirtxml.DomainInterfaceMAC{Address: n.mac},
			Source: src,
			Model:  &libvirtxml.DomainInterfaceModel{Type: model(i)},
		})
	}
	return out
}

// operatorDevices adds a serial console and VNC graphics.
func operatorDevices(d *libvirtxml.DomainDeviceList) {
	zero := uint(0)
	pty := func() *libvirtxml.DomainChardevSource {
		return &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}}
	}
	d.Serials = []libvirtxml.DomainSerial{{Source: pty(), Target: &libvirtxml.DomainSerialTarget{Port: &zero}}}
	d.Consoles = []libvirtxml.DomainConsole{{Source: pty(), Target: &libvirtxml.DomainConsoleTarget{Type: "serial", Port: &zero}}}
	d.Graphics = []libvirtxml.DomainGraphic{{VNC: &libvirtxml.DomainGraphicVNC{Port: -1, AutoPort: "yes"}}}
	d.Videos = []libvirtxml.DomainVideo{{Model: libvirtxml.DomainVideoModel{Type: "vga"}}}
	d.Inputs = []libvirtxml.DomainInput{{Type: "tablet", Bus: "usb"}}
}

// DeviceName is the i-th device name with a prefix: sda … sdz, sdaa ….
func DeviceName(prefix string, i int) string {
	var suffix []byte
	for i++; i > 0; i = (i - 1) / 26 {
		suffix = append([]byte{byte('a' + (i-1)%26)}, suffix...)
	}
	return prefix + string(suffix)
}
