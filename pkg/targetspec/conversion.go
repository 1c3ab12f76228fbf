package targetspec

import ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"

// ConvertsGuest says whether a job with options.guest_conversion c from a
// source of platform p adapts its guest in PREPARING: ON always, OFF never,
// AUTO (or unset) for a VMware source only (a KVM source's guest runs on
// KVM already).
func ConvertsGuest(c ferryv1.GuestConversion, p ferryv1.Platform) bool {
	switch c {
	case ferryv1.GuestConversion_GUEST_CONVERSION_ON:
		return true
	case ferryv1.GuestConversion_GUEST_CONVERSION_OFF:
		return false
	default:
		return p == ferryv1.Platform_PLATFORM_VMWARE
	}
}

// VirtioTargets says whether the target t gives a guest virtio devices:
// os_type WINDOWS_VIRTIO, a virtio disk bus (the VM's or a disk's), or a
// virtio NIC model. A Windows guest needs drivers for them.
func VirtioTargets(t *ferryv1.TargetVm) bool {
	virtio := func(b ferryv1.DiskBus) bool {
		return b == ferryv1.DiskBus_DISK_BUS_VIRTIO_SCSI || b == ferryv1.DiskBus_DISK_BUS_VIRTIO_BLK
	}
	if t.GetOsType() == ferryv1.OsType_OS_TYPE_WINDOWS_VIRTIO || virtio(t.GetDiskBus()) {
		return true
	}
	for _, d := range t.GetDisks() {
		if virtio(d.GetBus()) {
			return true
		}
	}
	for _, n := range t.GetNics() {
		if n.GetModel() == "virtio" {
			return true
		}
	}
	return false
}
