package kvm

import (
	"errors"
	"fmt"
)

// ErrVersion reports a source whose libvirt or QEMU is too old.
var ErrVersion = errors.New("source version too old")

// ErrNoVM reports a VM that the source does not have.
var ErrNoVM = errors.New("no such VM")

// Version is a libvirt or QEMU version.
type Version struct{ Major, Minor, Micro uint32 }

// versionOf decodes libvirt's major*1,000,000 + minor*1,000 + micro.
func versionOf(v uint32) Version {
	return Version{Major: v / 1000000, Minor: v / 1000 % 1000, Micro: v % 1000}
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
// storage needs libvirt 1.2.16; a consistent copy of a running VM needs
// the backup API, libvirt 6.0.0 with QEMU 4.2.
var (
	MinLibvirt       = Version{1, 2, 9}
	MinQEMU          = Version{1, 1, 0}
	MinLibvirtCeph   = Version{1, 2, 16}
	MinLibvirtBackup = Version{6, 0, 0}
	MinQEMUBackup    = Version{4, 2, 0}
)

func checkVersions(lib, qemu Version, ceph bool) error {
	var errs []error
	if lib.Less(MinLibvirt) {
		errs = append(errs, fmt.Errorf("%w: libvirt %s found, %s or newer needed", ErrVersion, lib, MinLibvirt))
	}
	if ceph && lib.Less(MinLibvirtCeph) {
		errs = append(errs, fmt.Errorf("%w: libvirt %s found, %s or newer needed with Ceph storage",
			ErrVersion, lib, MinLibvirtCeph))
	}
	if qemu.Less(MinQEMU) {
		errs = append(errs, fmt.Errorf("%w: QEMU %s found, %s or newer needed", ErrVersion, qemu, MinQEMU))
	}
	return errors.Join(errs...)
}

func checkBackupVersions(lib, qemu Version) error {
	if lib.Less(MinLibvirtBackup) || qemu.Less(MinQEMUBackup) {
		return fmt.Errorf("%w: a consistent copy of a running VM needs libvirt %s and QEMU %s "+
			"(the backup API); found libvirt %s and QEMU %s",
			ErrVersion, MinLibvirtBackup, MinQEMUBackup, lib, qemu)
	}
	return nil
}
