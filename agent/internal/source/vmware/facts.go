package vmware

import (
	"github.com/vmware/govmomi/vim25/types"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/targetspec"
)

// Proto is the VM as the API describes source VMs.
func (vm *VM) Proto() *ferryv1.SourceVm {
	out := &ferryv1.SourceVm{
		Id: vm.ID(), Name: vm.Name, Uuid: vm.UUID, Cpus: int32(vm.VCPUs), MemoryBytes: vm.MemoryBytes,
		CdromCount: int32(vm.CDROMs), OsType: targetspec.OSTypeOfGuestID(vm.GuestID), OsName: vm.GuestID,
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
