package target

import (
	"fmt"
	"strings"

	"libvirt.org/go/libvirtxml"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/targetspec"
)

// A guest moved from one KVM host to another keeps the hardware it knows,
// unless the job says otherwise: the machine family (q35 or i440fx), each
// disk's bus, which disk boots, each NIC's model, the CPU mode and the
// CD-ROMs' bus. A guest from VMware gets what its OS type runs best on
// (targetspec), since its hardware changes anyway.

// fromKVM says whether the source described its hardware as libvirt does
// (a KVM source reports its machine type).
func (s Spec) fromKVM() bool { return s.Source.GetMachineType() != "" }

// q35 says whether the target is a q35 machine.
func (s Spec) q35() bool {
	switch s.VM.GetMachineType() {
	case ferryv1.MachineType_MACHINE_TYPE_Q35:
		return true
	case ferryv1.MachineType_MACHINE_TYPE_PC:
		return false
	}
	return strings.Contains(s.Source.GetMachineType(), "q35")
}

// machine is the <type machine>: the family's alias, which libvirt
// expands to the newest version the target host's QEMU has.
func (s Spec) machine() string {
	if s.q35() {
		return "q35"
	}
	return "pc"
}

// sourceDisk is the source disk a target disk copies, nil if unknown.
func (s Spec) sourceDisk(td *ferryv1.TargetDisk) *ferryv1.SourceDisk {
	for _, d := range s.Source.GetDisks() {
		if d.GetTarget() == td.GetSourceDisk() {
			return d
		}
	}
	return nil
}

// busOfLibvirt is the API's name of a libvirt disk bus.
var busOfLibvirt = map[string]ferryv1.DiskBus{
	"virtio": ferryv1.DiskBus_DISK_BUS_VIRTIO_BLK, "scsi": ferryv1.DiskBus_DISK_BUS_VIRTIO_SCSI,
	"sata": ferryv1.DiskBus_DISK_BUS_SATA, "ide": ferryv1.DiskBus_DISK_BUS_IDE,
}

// bus is the bus of the i-th target disk: its own, else the VM's, else
// (KVM) its bus at the source, else the OS type's.
func (s Spec) bus(i int) ferryv1.DiskBus {
	td := s.VM.GetDisks()[i]
	if b := td.GetBus(); b != ferryv1.DiskBus_DISK_BUS_UNSPECIFIED {
		return b
	}
	if b := s.VM.GetDiskBus(); b != ferryv1.DiskBus_DISK_BUS_UNSPECIFIED {
		return b
	}
	if s.fromKVM() {
		if b, ok := busOfLibvirt[s.sourceDisk(td).GetBus()]; ok {
			return b
		}
	}
	return targetspec.DiskBus(s.osType())
}

// bootDisk is the index of the target disk that boots: the one marked,
// else (KVM) the one whose source disk has the lowest boot order, else
// the first.
func (s Spec) bootDisk() int {
	best, order := 0, int32(0)
	for i, td := range s.VM.GetDisks() {
		if td.GetBoot() {
			return i
		}
		if !s.fromKVM() {
			continue
		}
		if o := s.sourceDisk(td).GetBootOrder(); o > 0 && (order == 0 || o < order) {
			best, order = i, o
		}
	}
	return best
}

// nicModel is a NIC's model: its own, else (KVM) the source NIC's, else
// the OS type's.
func (s Spec) nicModel(i int) string {
	tn := s.VM.GetNics()[i]
	if m := tn.GetModel(); m != "" {
		return m
	}
	if s.fromKVM() {
		for _, sn := range s.Source.GetNics() {
			if sn.GetMac() != "" && strings.EqualFold(sn.GetMac(), tn.GetSourceMac()) && sn.GetModel() != "" {
				return sn.GetModel()
			}
		}
	}
	return targetspec.NICModel(s.osType())
}

// cpu is a KVM domain's <cpu>: the source's mode when it is one that
// adapts to the host (host-model, host-passthrough, maximum), else
// host-model. A TCG domain gets none.
func (s Spec) cpu(domainType string) *libvirtxml.DomainCPU {
	if domainType != "kvm" {
		return nil
	}
	switch m := s.Source.GetCpuMode(); m {
	case "host-passthrough", "maximum":
		return &libvirtxml.DomainCPU{Mode: m}
	}
	return &libvirtxml.DomainCPU{Mode: "host-model"}
}

// cdromBus is the CD-ROMs' bus: the source's first drive's (KVM), else
// SATA on q35 (it has no IDE) and IDE on PC.
func (s Spec) cdromBus() string {
	if cds := s.Source.GetCdroms(); s.fromKVM() && len(cds) > 0 && cds[0].GetBus() != "" {
		if b := cds[0].GetBus(); b != "ide" || !s.q35() {
			return b
		}
	}
	if s.q35() {
		return "sata"
	}
	return "ide"
}

// notes are what the operator should know of the hardware: CD-ROM media
// that stayed on the source.
func (s Spec) notes() []string {
	var out []string
	for _, cd := range s.Source.GetCdroms() {
		if cd.GetMedia() != "" {
			out = append(out, fmt.Sprintf("CD-ROM %s of the source held %s, which was not copied: the target's drive is empty", cd.GetTarget(), cd.GetMedia()))
		}
	}
	return out
}

// busNames is the libvirt bus and device name prefix of an API bus.
func busNames(b ferryv1.DiskBus) (bus, prefix string) {
	switch b {
	case ferryv1.DiskBus_DISK_BUS_VIRTIO_BLK:
		return "virtio", "vd"
	case ferryv1.DiskBus_DISK_BUS_SATA:
		return "sata", "sd"
	case ferryv1.DiskBus_DISK_BUS_IDE:
		return "ide", "hd"
	}
	return "scsi", "sd"
}
