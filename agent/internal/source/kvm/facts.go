package kvm

import (
	"context"
	"fmt"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// Proto is the VM as the API describes source VMs.
func (vm *VM) Proto() *ferryv1.SourceVm {
	out := &ferryv1.SourceVm{
		Id: vm.Name, Name: vm.Name, Uuid: vm.UUID, Cpus: int32(vm.VCPUs), MemoryBytes: vm.MemoryBytes,
		CdromCount: int32(vm.CDROMs), OsName: vm.OSName,
		State:    map[string]ferryv1.SourceVmState{StateRunning: ferryv1.SourceVmState_SOURCE_VM_STATE_RUNNING, StatePaused: ferryv1.SourceVmState_SOURCE_VM_STATE_PAUSED, StateShutOff: ferryv1.SourceVmState_SOURCE_VM_STATE_SHUT_OFF}[vm.State],
		Firmware: ferryv1.Firmware_FIRMWARE_BIOS,
		OsType:   map[string]ferryv1.OsType{OSLinux: ferryv1.OsType_OS_TYPE_LINUX, OSWindows: ferryv1.OsType_OS_TYPE_WINDOWS}[vm.OSType],
	}
	if vm.Firmware.Type == FirmwareUEFI {
		out.Firmware = ferryv1.Firmware_FIRMWARE_UEFI
	}
	for _, d := range vm.Disks {
		out.Disks = append(out.Disks, &ferryv1.SourceDisk{Target: d.Target, Path: d.Path, Format: d.Format,
			CapacityBytes: d.CapacityBytes, AllocationBytes: d.AllocationBytes, Bus: d.Bus})
	}
	for _, n := range vm.NICs {
		out.Nics = append(out.Nics, &ferryv1.SourceNic{Mac: n.MAC, Network: n.Network, Bridge: n.Bridge, Model: n.Model})
	}
	return out
}

// ReadFile reads a regular file on the source host over SSH.
func (c *Conn) ReadFile(ctx context.Context, path string) ([]byte, error) {
	q := shellQuote(path)
	out, err := runRemote(ctx, c.ssh, "test -f "+q+" && cat "+q)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return []byte(out), nil
}
