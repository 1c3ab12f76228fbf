package targetspec

import (
	"strings"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// Platform is the guest platform of vm: its os_type when the source
// knows it, else the one its guest OS id names, else Linux.
func Platform(vm *ferryv1.SourceVm) ferryv1.OsType {
	if o := vm.GetOsType(); o != ferryv1.OsType_OS_TYPE_UNSPECIFIED {
		return o
	}
	if o := OSTypeOfGuestID(vm.GetGuestOsId()); o != ferryv1.OsType_OS_TYPE_UNSPECIFIED {
		return o
	}
	return ferryv1.OsType_OS_TYPE_LINUX
}

// linuxGuests are fragments of the VMware guest ids and libosinfo ids of
// Linux distributions.
var linuxGuests = []string{"linux", "rhel", "centos", "ubuntu", "debian", "sles", "suse", "fedora",
	"oracle", "asianux", "coreos", "photon", "rocky", "alma", "amazon", "mandrake", "mandriva",
	"turbo", "redhat", "opensuse", "crxpod", "crxsys", "vmwarephoton", "kylin", "miracle", "pardus", "fusionos", "prolinux"}

// OSTypeOfGuestID tells Windows from Linux by a VMware guestId
// ("windows2019srv_64Guest", "winNetStandardGuest", "rhel9_64Guest") or a
// libosinfo id ("http://microsoft.com/win/10", "http://ubuntu.com/ubuntu/22.04").
// Other ids ("otherGuest", "freebsd13_64Guest") and an empty one are
// unspecified: the source's description says no more than it knows, and
// Platform decides the target's.
func OSTypeOfGuestID(id string) ferryv1.OsType {
	id = strings.ToLower(strings.TrimSpace(id))
	switch {
	case id == "":
		return ferryv1.OsType_OS_TYPE_UNSPECIFIED
	case strings.HasPrefix(id, "win"), strings.Contains(id, "microsoft.com/win"):
		return ferryv1.OsType_OS_TYPE_WINDOWS
	}
	for _, frag := range linuxGuests {
		if strings.Contains(id, frag) {
			return ferryv1.OsType_OS_TYPE_LINUX
		}
	}
	return ferryv1.OsType_OS_TYPE_UNSPECIFIED
}

// DiskBus is the disk bus of an OS type: virtio-scsi for Linux and for
// Windows with virtio drivers, SATA for plain Windows (no virtio driver
// in the box).
func DiskBus(os ferryv1.OsType) ferryv1.DiskBus {
	if os == ferryv1.OsType_OS_TYPE_WINDOWS {
		return ferryv1.DiskBus_DISK_BUS_SATA
	}
	return ferryv1.DiskBus_DISK_BUS_VIRTIO_SCSI
}

// NICModel is the libvirt NIC model of an OS type: virtio, or e1000 for
// Windows without virtio drivers.
func NICModel(os ferryv1.OsType) string {
	if os == ferryv1.OsType_OS_TYPE_WINDOWS {
		return "e1000"
	}
	return "virtio"
}

// IsWindows reports whether os is Windows, with or without virtio drivers.
func IsWindows(os ferryv1.OsType) bool {
	return os == ferryv1.OsType_OS_TYPE_WINDOWS || os == ferryv1.OsType_OS_TYPE_WINDOWS_VIRTIO
}
