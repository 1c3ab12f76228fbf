package kvm

import (
	"context"
	"errors"
	"fmt"
	"strings"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// The API's names for the states and OS types the driver reports.
var (
	protoState = map[string]ferryv1.SourceVmState{
		StateRunning: ferryv1.SourceVmState_SOURCE_VM_STATE_RUNNING,
		StatePaused:  ferryv1.SourceVmState_SOURCE_VM_STATE_PAUSED,
		StateShutOff: ferryv1.SourceVmState_SOURCE_VM_STATE_SHUT_OFF,
	}
	protoOSType = map[string]ferryv1.OsType{OSLinux: ferryv1.OsType_OS_TYPE_LINUX, OSWindows: ferryv1.OsType_OS_TYPE_WINDOWS}
)

// Proto is the VM as the API describes source VMs.
func (vm *VM) Proto() *ferryv1.SourceVm {
	out := &ferryv1.SourceVm{
		Id: vm.Name, Name: vm.Name, Uuid: vm.UUID, Cpus: int32(vm.VCPUs), MemoryBytes: vm.MemoryBytes,
		CdromCount: int32(vm.CDROMs), OsName: vm.OSName,
		State: protoState[vm.State], Firmware: ferryv1.Firmware_FIRMWARE_BIOS, OsType: protoOSType[vm.OSType],
		MachineType: vm.Machine, CpuMode: vm.CPUMode,
	}
	for _, cd := range vm.CDROMList {
		out.Cdroms = append(out.Cdroms, &ferryv1.SourceCdrom{Target: cd.Target, Bus: cd.Bus, Media: cd.Media})
	}
	if vm.Firmware.Type == FirmwareUEFI {
		out.Firmware = ferryv1.Firmware_FIRMWARE_UEFI
	}
	for _, d := range vm.Disks {
		out.Disks = append(out.Disks, &ferryv1.SourceDisk{Target: d.Target, Path: d.Path, Format: d.Format,
			CapacityBytes: d.CapacityBytes, AllocationBytes: d.AllocationBytes, Bus: d.Bus, BootOrder: int32(d.BootOrder)})
	}
	for _, n := range vm.NICs {
		out.Nics = append(out.Nics, &ferryv1.SourceNic{Mac: n.MAC, Network: n.Network, Bridge: n.Bridge, Model: n.Model,
			IpAddresses: n.IPs})
	}
	return out
}

// ReadFile reads a regular file on the source host over SSH. Only the
// command's standard output is the file: what it prints on standard error
// must never end up in the bytes (an NVRAM copy is binary).
func (c *Conn) ReadFile(ctx context.Context, path string) ([]byte, error) {
	session, err := c.ssh.NewSession()
	if err != nil {
		return nil, fmt.Errorf("read %s: open SSH session: %w", path, err)
	}
	defer session.Close()
	stop := context.AfterFunc(ctx, func() { session.Close() })
	defer stop()
	var stderr strings.Builder
	session.Stderr = &stderr
	q := shellQuote(path)
	out, err := session.Output("test -f " + q + " && cat " + q)
	if err != nil {
		return nil, fmt.Errorf("read %s on the source: %w: %s", path, errors.Join(err, ctx.Err()), strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// Product is what the source runs: libvirt and QEMU versions.
func (c *Conn) Product() *ferryv1.SourceProduct {
	return &ferryv1.SourceProduct{
		FullName: fmt.Sprintf("libvirt %s (QEMU %s)", c.libVersion, c.qemuVersion),
		Version:  c.libVersion.String(), ApiVersion: c.libVersion.String(), ApiType: "libvirt",
		QemuVersion: c.qemuVersion.String(),
	}
}

// HostInfo describes the source host: its name as libvirt reports it (the
// address it was reached at when libvirt cannot tell), CPUs and memory.
func (c *Conn) HostInfo() *ferryv1.SourceHost {
	h := &ferryv1.SourceHost{Id: c.cfg.Address, Name: c.cfg.Address, Version: c.libVersion.String(), ConnectionState: "connected"}
	if name, err := c.virt.GetHostname(); err == nil && name != "" {
		h.Name = name
	}
	if info, err := c.virt.GetNodeInfo(); err == nil {
		h.Cpus, h.MemoryBytes = int32(info.Cpus), int64(info.Memory)<<10
	}
	return h
}
