package target

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// kvmSource is a q35 KVM VM booting from its second disk (vdb, virtio)
// with a virtio-scsi first disk, an e1000 NIC, host-passthrough CPU and a
// SATA CD-ROM holding an ISO.
func kvmSource() *ferryv1.SourceVm {
	return &ferryv1.SourceVm{
		MachineType: "pc-q35-7.2", CpuMode: "host-passthrough", OsType: ferryv1.OsType_OS_TYPE_LINUX,
		Disks:  []*ferryv1.SourceDisk{{Target: "vda", Bus: "scsi", BootOrder: 2}, {Target: "vdb", Bus: "virtio", BootOrder: 1}},
		Nics:   []*ferryv1.SourceNic{{Mac: "52:54:00:aa:bb:01", Model: "e1000"}, {Mac: "52:54:00:aa:bb:02", Model: "virtio"}},
		Cdroms: []*ferryv1.SourceCdrom{{Target: "sdc", Bus: "sata", Media: "/iso/tools.iso"}, {Target: "sdd", Bus: "sata"}},
	}
}

func TestBuildDomainKeepsKVMHardware(t *testing.T) {
	s := unitSpec(t)
	s.Source = kvmSource()
	d, err := BuildDomain(s, BuildOptions{Type: "kvm"})
	if err != nil {
		t.Fatal(err)
	}
	if m := d.OS.Type.Machine; m != "q35" {
		t.Errorf("machine = %s, want q35", m)
	}
	if got, want := diskTargets(d, "disk"), [][2]string{{"sda", "scsi"}, {"vda", "virtio"}}; !reflect.DeepEqual(got, want) {
		t.Errorf("disks = %v, want %v", got, want)
	}
	if got, want := diskTargets(d, "cdrom"), [][2]string{{"sdb", "sata"}, {"sdc", "sata"}}; !reflect.DeepEqual(got, want) {
		t.Errorf("CD-ROMs = %v, want %v (after the SCSI disk's sda)", got, want)
	}
	for i, disk := range d.Devices.Disks[:2] {
		if boots := disk.Boot != nil && disk.Boot.Order == 1; boots != (i == 1) {
			t.Errorf("disk %d (%s) boot = %v; the source booted vdb, the second", i, disk.Target.Dev, disk.Boot)
		}
	}
	if len(d.Devices.Controllers) != 1 || d.Devices.Controllers[0].Model != "virtio-scsi" {
		t.Errorf("controllers = %v, want the virtio-scsi one for sda", d.Devices.Controllers)
	}
	if m0, m1 := d.Devices.Interfaces[0].Model.Type, d.Devices.Interfaces[1].Model.Type; m0 != "e1000" || m1 != "virtio" {
		t.Errorf("NIC models = %s, %s; want e1000, virtio", m0, m1)
	}
	if d.CPU == nil || d.CPU.Mode != "host-passthrough" {
		t.Errorf("cpu = %+v, want host-passthrough", d.CPU)
	}
	if n := s.notes(); len(n) != 1 || !strings.Contains(n[0], "/iso/tools.iso") {
		t.Errorf("notes = %q, want the ISO left behind", n)
	}

	// The job's own choices win.
	s.VM.MachineType, s.VM.DiskBus = ferryv1.MachineType_MACHINE_TYPE_PC, ferryv1.DiskBus_DISK_BUS_SATA
	s.VM.Disks[0].Boot, s.VM.Disks[1].Bus = true, ferryv1.DiskBus_DISK_BUS_IDE
	s.VM.Nics[0].Model = "rtl8139"
	d, err = BuildDomain(s, BuildOptions{Type: "qemu"})
	if err != nil {
		t.Fatal(err)
	}
	if d.OS.Type.Machine != "pc" || d.CPU != nil || d.Devices.Disks[0].Boot == nil || d.Devices.Disks[1].Boot != nil ||
		d.Devices.Interfaces[0].Model.Type != "rtl8139" {
		t.Errorf("overrides: machine %s, cpu %v, boot %v/%v, nic %s", d.OS.Type.Machine, d.CPU, d.Devices.Disks[0].Boot, d.Devices.Disks[1].Boot,
			d.Devices.Interfaces[0].Model.Type)
	}
	if got, want := diskTargets(d, "disk"), [][2]string{{"sda", "sata"}, {"hda", "ide"}}; !reflect.DeepEqual(got, want) {
		t.Errorf("overridden disks = %v, want %v", got, want)
	}
	if got, want := diskTargets(d, "cdrom"), [][2]string{{"sdb", "sata"}, {"sdc", "sata"}}; !reflect.DeepEqual(got, want) {
		t.Errorf("CD-ROMs = %v, want %v (the source's SATA, which PC has too)", got, want)
	}
	s.VM.MachineType = ferryv1.MachineType_MACHINE_TYPE_Q35
	if _, err := BuildDomain(s, BuildOptions{Type: "qemu"}); !errors.Is(err, ErrBadSpec) || !strings.Contains(err.Error(), "IDE on a q35") {
		t.Errorf("IDE on q35: %v", err)
	}
}

// TestBuildDomainVMwareUnchanged: a VMware source reports no machine
// type, so its VM gets the OS type's hardware on a PC machine, as before.
func TestBuildDomainVMwareUnchanged(t *testing.T) {
	s := unitSpec(t)
	s.Source = &ferryv1.SourceVm{OsType: ferryv1.OsType_OS_TYPE_LINUX,
		Disks: []*ferryv1.SourceDisk{{Target: "vda", Bus: "ide"}, {Target: "vdb", Bus: "sata"}},
		Nics:  []*ferryv1.SourceNic{{Mac: "52:54:00:aa:bb:01", Model: "vmxnet3"}}}
	d, err := BuildDomain(s, BuildOptions{Type: "kvm"})
	if err != nil {
		t.Fatal(err)
	}
	if d.OS.Type.Machine != "pc" || d.Devices.Interfaces[0].Model.Type != "virtio" || d.CPU.Mode != "host-model" || d.Devices.Disks[0].Boot == nil {
		t.Errorf("VMware VM: machine %s, nic %s, cpu %v, boot %v", d.OS.Type.Machine, d.Devices.Interfaces[0].Model.Type, d.CPU, d.Devices.Disks[0].Boot)
	}
	if got, want := diskTargets(d, "disk"), [][2]string{{"sda", "scsi"}, {"sdb", "scsi"}}; !reflect.DeepEqual(got, want) {
		t.Errorf("disks = %v, want %v", got, want)
	}
	if got, want := diskTargets(d, "cdrom"), [][2]string{{"hda", "ide"}, {"hdb", "ide"}}; !reflect.DeepEqual(got, want) {
		t.Errorf("CD-ROMs = %v, want %v", got, want)
	}
}
