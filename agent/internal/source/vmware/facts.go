package vmware

import (
	"strings"

	"github.com/vmware/govmomi/vim25/types"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// Proto is the VM as the API describes source VMs.
func (vm *VM) Proto() *ferryv1.SourceVm {
	out := &ferryv1.SourceVm{
		Id: vm.ID(), Name: vm.Name, Uuid: vm.UUID, Cpus: int32(vm.VCPUs), MemoryBytes: vm.MemoryBytes,
		CdromCount: int32(vm.CDROMs), OsType: OSType(vm.GuestID), OsName: vm.GuestID,
		State: map[types.VirtualMachinePowerState]ferryv1.SourceVmState{
			types.VirtualMachinePowerStatePoweredOn:  ferryv1.SourceVmState_SOURCE_VM_STATE_RUNNING,
			types.VirtualMachinePowerStateSuspended:  ferryv1.SourceVmState_SOURCE_VM_STATE_PAUSED,
			types.VirtualMachinePowerStatePoweredOff: ferryv1.SourceVmState_SOURCE_VM_STATE_SHUT_OFF,
		}[vm.PowerState],
		Firmware: ferryv1.Firmware_FIRMWARE_BIOS, Template: vm.Template, CbtEnabled: vm.CBT, GuestOsId: vm.GuestID,
		Host: vm.Host.Name, Cluster: vm.Host.Cluster, Datacenter: vm.Host.Datacenter,
	}
	if vm.Firmware == FirmwareEFI {
		out.Firmware = ferryv1.Firmware_FIRMWARE_UEFI
	}
	for _, d := range vm.Disks {
		out.Disks = append(out.Disks, &ferryv1.SourceDisk{Target: d.Name, Path: d.File, Format: "vmdk",
			CapacityBytes: d.CapacityBytes, Bus: d.Bus, DiskMode: d.Mode})
	}
	for _, n := range vm.NICs {
		out.Nics = append(out.Nics, &ferryv1.SourceNic{Mac: n.MAC, Network: n.Network, Model: n.Model,
			Portgroup: n.Network, IpAddresses: n.IPs})
	}
	return out
}

// linuxGuests are fragments of vSphere guest ids of Linux guests
// (rhel9_64Guest, ubuntu64Guest, other5xLinux64Guest...).
var linuxGuests = []string{"linux", "rhel", "centos", "ubuntu", "debian", "sles", "suse", "fedora",
	"oracle", "asianux", "coreos", "photon", "rocky", "alma", "amazon", "mandrake", "mandriva",
	"turbo", "redhat", "opensuse", "crxpod", "crxsys", "vmwarephoton", "kylin", "miracle", "pardus", "fusionos", "prolinux"}

// OSType tells Linux from Windows by vSphere's guest id; other or unknown
// ids are unspecified.
func OSType(guestID string) ferryv1.OsType {
	id := strings.ToLower(guestID)
	switch {
	case id == "":
		return ferryv1.OsType_OS_TYPE_UNSPECIFIED
	case strings.HasPrefix(id, "win"):
		return ferryv1.OsType_OS_TYPE_WINDOWS
	}
	for _, frag := range linuxGuests {
		if strings.Contains(id, frag) {
			return ferryv1.OsType_OS_TYPE_LINUX
		}
	}
	return ferryv1.OsType_OS_TYPE_UNSPECIFIED
}
