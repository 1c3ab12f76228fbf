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
	if err := CheckCeph(lib, ceph); err != nil {
		errs = append(errs, err)
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

// MinQEMUCold is the oldest QEMU whose qemu-nbd serves a shut-off VM's
// images the way the cold copy starts it: read-only, with the block
// layer's force-share option (QEMU 2.10) in --image-opts. The agent
// takes the QEMU version libvirt reports for the host as qemu-nbd's.
var MinQEMUCold = Version{2, 10, 0}

// Method is how a KVM VM's disks are copied.
type Method int

// The copy methods.
const (
	// MethodRefused: the source is too old for any method.
	MethodRefused Method = iota
	// MethodBackup: a consistent copy of a running or paused VM through
	// libvirt's backup API (libvirt 6.0, QEMU 4.2).
	MethodBackup
	// MethodCold: a shut-off VM's images read through a read-only
	// qemu-nbd on the source host (QEMU 2.10).
	MethodCold
	// MethodSnapshot: an external disk-only snapshot, the original images
	// read, then an active block commit; what a running or paused VM on a
	// host without the backup API (libvirt 1.2.9 and QEMU 1.1 or newer)
	// gets.
	MethodSnapshot
	// MethodAtStart: the VM's state is not known, so the agent chooses
	// when the job starts.
	MethodAtStart
)

func (m Method) String() string {
	switch m {
	case MethodBackup:
		return "backup API"
	case MethodCold:
		return "cold image read"
	case MethodSnapshot:
		return "snapshot"
	case MethodAtStart:
		return "chosen when the job starts"
	}
	return "refused"
}

// Choice is the copy method for one VM and why.
type Choice struct {
	Libvirt, QEMU Version
	Method        Method
	Why           string
	// Err is nil when the method can run: ErrTooOld for MethodRefused.
	Err error
}

// String says "libvirt X, QEMU Y: <method> because <why>".
func (c Choice) String() string {
	return fmt.Sprintf("libvirt %s, QEMU %s: %s because %s", c.Libvirt, c.QEMU, c.Method, c.Why)
}

// Error is the choice as an error wrapping Err, nil when the method can
// run.
func (c Choice) Error() error {
	if c.Err == nil {
		return nil
	}
	return fmt.Errorf("%w: %s", c.Err, c)
}

// Choose picks the copy method for a VM in state on a source running
// libvirt lib and QEMU qemu: below libvirt 1.2.9 or QEMU 1.1 nothing;
// a shut-off VM is read cold (QEMU 2.10 for qemu-nbd's force-share); a
// running or paused VM through the backup API (libvirt 6.0 and QEMU
// 4.2), else by the snapshot method (libvirt 1.2.9 and QEMU 1.1). An
// unspecified state leaves the method to the agent, which knows the
// state when the job starts. Ceph's own minimum is CheckCeph's.
func Choose(lib, qemu Version, state ferryv1.SourceVmState) Choice {
	c := Choice{Libvirt: lib, QEMU: qemu}
	var old []string
	if lib.Less(MinLibvirt) {
		old = append(old, fmt.Sprintf("libvirt %s", MinLibvirt))
	}
	if qemu.Less(MinQEMU) {
		old = append(old, fmt.Sprintf("QEMU %s", MinQEMU))
	}
	backup := !lib.Less(MinLibvirtBackup) && !qemu.Less(MinQEMUBackup)
	switch {
	case len(old) > 0:
		c.Method, c.Err = MethodRefused, ErrTooOld
		c.Why = fmt.Sprintf("a migration needs %s or newer", strings.Join(old, " and "))
	case state == ferryv1.SourceVmState_SOURCE_VM_STATE_SHUT_OFF && qemu.Less(MinQEMUCold):
		c.Method, c.Err = MethodRefused, ErrTooOld
		c.Why = fmt.Sprintf("the VM is shut off and its images are read through qemu-nbd with force-share, "+
			"which needs QEMU %s or newer (reading the image files without qemu-nbd is not implemented yet)", MinQEMUCold)
	case state == ferryv1.SourceVmState_SOURCE_VM_STATE_SHUT_OFF:
		c.Method = MethodCold
		c.Why = fmt.Sprintf("the VM is shut off: its images are read through a read-only qemu-nbd (QEMU %s or newer), "+
			"no backup API needed", MinQEMUCold)
	case state == ferryv1.SourceVmState_SOURCE_VM_STATE_UNSPECIFIED:
		c.Method = MethodAtStart
		c.Why = "the VM's state is not in the synced inventory; a running VM gets the backup API " +
			fmt.Sprintf("(libvirt %s and QEMU %s) or else the snapshot method, a shut-off one needs QEMU %s", MinLibvirtBackup, MinQEMUBackup, MinQEMUCold)
	case backup:
		c.Method = MethodBackup
		c.Why = fmt.Sprintf("the VM is %s and libvirt %s with QEMU %s or newer have the backup API",
			stateWord(state), MinLibvirtBackup, MinQEMUBackup)
	default:
		c.Method = MethodSnapshot
		c.Why = fmt.Sprintf("the VM is %s and the backup API needs libvirt %s and QEMU %s: "+
			"an external disk-only snapshot holds the original images still while they are read, "+
			"then an active block commit merges the VM's writes back (libvirt %s and QEMU %s suffice)",
			stateWord(state), MinLibvirtBackup, MinQEMUBackup, MinLibvirt, MinQEMU)
	}
	return c
}

// NotRoot is c for a source whose SSH user is not root: the backup API's
// NBD socket is made by QEMU where only root reaches, so a VM that would
// get the backup API gets the snapshot method, whatever else the user
// may do (group libvirt, or sudo for the sudoers snippet's commands).
// The agent and the preview both apply it, so they say the same.
func NotRoot(c Choice, user string) Choice {
	if c.Method != MethodBackup {
		return c
	}
	c.Method = MethodSnapshot
	c.Why = fmt.Sprintf("the SSH user %s is not root: the backup API's NBD socket is out of its reach, "+
		"the snapshot method needs only libvirt and the images (read access, or qemu-nbd through sudo)", user)
	return c
}

func stateWord(s ferryv1.SourceVmState) string {
	if s == ferryv1.SourceVmState_SOURCE_VM_STATE_PAUSED {
		return "paused"
	}
	return "running"
}

// CheckCeph refuses a libvirt too old for Ceph (RBD) storage when the job
// involves Ceph (ceph: why, see CephReason; "" when it does not).
func CheckCeph(lib Version, ceph string) error {
	if ceph != "" && lib.Less(MinLibvirtCeph) {
		return fmt.Errorf("%w: libvirt %s found, %s or newer needed with Ceph storage (%s)", ErrTooOld, lib, MinLibvirtCeph, ceph)
	}
	return nil
}
