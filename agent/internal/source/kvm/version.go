package kvm

import (
	"errors"

	"github.com/ferry-v2v/ferry/pkg/kvmver"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// ErrVersion reports a source whose libvirt or QEMU is too old.
var ErrVersion = kvmver.ErrTooOld

// ErrNoVM reports a VM that the source does not have.
var ErrNoVM = errors.New("no such VM")

// Version is a libvirt or QEMU version.
type Version = kvmver.Version

// versionOf decodes libvirt's major*1,000,000 + minor*1,000 + micro.
func versionOf(v uint32) Version {
	return Version{Major: v / 1000000, Minor: v / 1000 % 1000, Micro: v % 1000}
}

// The minimum versions and their rules live in pkg/kvmver, shared with
// the coordinator's pre-checks; the agent applies them again when a job
// starts, to the versions it finds then.
func checkVersions(lib, qemu Version, ceph string) error { return kvmver.Check(lib, qemu, ceph) }

func checkBackupVersions(lib, qemu Version) error { return kvmver.CheckBackup(lib, qemu) }

// copyMethod chooses how the disks of a VM in state are copied
// (kvmver.Choose, as the coordinator's pre-checks choose from the synced
// facts). A state other than running, paused or shut off (crashed,
// shutting down) is taken as running: the backup API is tried, as
// before, and libvirt says what it makes of the state.
func copyMethod(lib, qemu Version, state string) kvmver.Choice {
	s, ok := protoState[state]
	if !ok {
		s = ferryv1.SourceVmState_SOURCE_VM_STATE_RUNNING
	}
	return kvmver.Choose(lib, qemu, s)
}
