// Package kvmver holds the libvirt and QEMU versions a KVM source must run
// for Ferry to migrate from it, and the rules that compare them. The
// coordinator's pre-checks apply them to the versions a source's synced
// inventory records; the agent applies them again to the versions it
// finds when a job starts.
package kvmver

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// ErrTooOld reports a source whose libvirt or QEMU is too old.
var ErrTooOld = errors.New("source version too old")

// Version is a libvirt or QEMU version.
type Version struct{ Major, Minor, Micro uint32 }

// Parse reads "9.0.0", "7.2" or "7.2.11 (Debian ...)".
func Parse(s string) (Version, bool) {
	s, _, _ = strings.Cut(strings.TrimSpace(s), " ")
	parts := strings.Split(s, ".")
	if len(parts) < 2 || len(parts) > 3 {
		return Version{}, false
	}
	var n [3]uint32
	for i, p := range parts {
		v, err := strconv.ParseUint(p, 10, 32)
		if err != nil {
			return Version{}, false
		}
		n[i] = uint32(v)
	}
	return Version{n[0], n[1], n[2]}, true
}

func (v Version) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro) }

// Less reports whether v is older than w.
func (v Version) Less(w Version) bool {
	if v.Major != w.Major {
		return v.Major < w.Major
	}
	if v.Minor != w.Minor {
		return v.Minor < w.Minor
	}
	return v.Micro < w.Micro
}

// Minimum versions: a migration needs libvirt 1.2.9 and QEMU 1.1; Ceph
// (RBD) disks, at the source or as the target storage, need libvirt
// 1.2.16; a consistent copy of a running VM needs the backup API, libvirt
// 6.0.0 with QEMU 4.2.
var (
	MinLibvirt       = Version{1, 2, 9}
	MinQEMU          = Version{1, 1, 0}
	MinLibvirtCeph   = Version{1, 2, 16}
	MinLibvirtBackup = Version{6, 0, 0}
	MinQEMUBackup    = Version{4, 2, 0}
)

// Check refuses versions too old for a migration. ceph says why the job
// involves Ceph (see CephReason), "" when it does not.
func Check(lib, qemu Version, ceph string) error {
	var errs []error
	if lib.Less(MinLibvirt) {
		errs = append(errs, fmt.Errorf("%w: libvirt %s found, %s or newer needed", ErrTooOld, lib, MinLibvirt))
	}
	if ceph != "" && lib.Less(MinLibvirtCeph) {
		errs = append(errs, fmt.Errorf("%w: libvirt %s found, %s or newer needed with Ceph storage (%s)",
			ErrTooOld, lib, MinLibvirtCeph, ceph))
	}
	if qemu.Less(MinQEMU) {
		errs = append(errs, fmt.Errorf("%w: QEMU %s found, %s or newer needed", ErrTooOld, qemu, MinQEMU))
	}
	return errors.Join(errs...)
}

// CheckBackup refuses versions without the backup API, which a
// consistent copy of a running VM needs.
func CheckBackup(lib, qemu Version) error {
	if lib.Less(MinLibvirtBackup) || qemu.Less(MinQEMUBackup) {
		return fmt.Errorf("%w: a consistent copy of a running VM needs libvirt %s and QEMU %s "+
			"(the backup API); found libvirt %s and QEMU %s",
			ErrTooOld, MinLibvirtBackup, MinQEMUBackup, lib, qemu)
	}
	return nil
}

// CephReason says why a job involves Ceph: a source disk it copies is an
// RBD image (a network disk of protocol rbd, which the source describes
// as "rbd:pool/image"), or its target storage is Ceph. copies says whether
// the job copies the disk with that target device; "" means neither.
func CephReason(targetCeph bool, disks []*ferryv1.SourceDisk, copies func(target string) bool) string {
	for _, d := range disks {
		if IsRBD(d.GetPath()) && (copies == nil || copies(d.GetTarget())) {
			return fmt.Sprintf("source disk %s is the RBD image %s", d.GetTarget(), strings.TrimPrefix(d.GetPath(), "rbd:"))
		}
	}
	if targetCeph {
		return "the target primary storage is Ceph"
	}
	return ""
}

// IsRBD says whether a source disk path names an RBD image.
func IsRBD(path string) bool { return strings.HasPrefix(path, "rbd:") }
