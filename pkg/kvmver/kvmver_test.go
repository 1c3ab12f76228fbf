package kvmver

import (
	"errors"
	"strings"
	"testing"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

func TestParse(t *testing.T) {
	for s, want := range map[string]Version{"9.0.0": {9, 0, 0}, "7.2": {7, 2, 0}, "7.2.11 (Debian 1:7.2+dfsg)": {7, 2, 11}} {
		if got, ok := Parse(s); !ok || got != want {
			t.Errorf("Parse(%q) = %v, %v; want %v", s, got, ok, want)
		}
	}
	for _, s := range []string{"", "9", "9.x.0", "1.2.3.4"} {
		if _, ok := Parse(s); ok {
			t.Errorf("Parse(%q) succeeded", s)
		}
	}
}

func TestCheck(t *testing.T) {
	tests := []struct {
		lib, qemu Version
		ceph      string
		want      string // the error, "" for none
	}{
		{Version{9, 0, 0}, Version{7, 2, 0}, "x", ""},
		{Version{1, 2, 9}, Version{1, 1, 0}, "", ""},
		{Version{1, 2, 8}, Version{2, 0, 0}, "", "source version too old: libvirt 1.2.8 found, 1.2.9 or newer needed"},
		{Version{1, 2, 15}, Version{2, 0, 0}, "source disk vda is the RBD image pool/img",
			"source version too old: libvirt 1.2.15 found, 1.2.16 or newer needed with Ceph storage (source disk vda is the RBD image pool/img)"},
		{Version{1, 2, 15}, Version{2, 0, 0}, "", ""},
		{Version{2, 0, 0}, Version{1, 0, 9}, "", "source version too old: QEMU 1.0.9 found, 1.1.0 or newer needed"},
	}
	for _, tt := range tests {
		err := Check(tt.lib, tt.qemu, tt.ceph)
		if tt.want == "" && err != nil || tt.want != "" && (!errors.Is(err, ErrTooOld) || err.Error() != tt.want) {
			t.Errorf("Check(%s, %s, %q) = %v; want %q", tt.lib, tt.qemu, tt.ceph, err, tt.want)
		}
	}
	if err := CheckBackup(Version{5, 10, 0}, Version{7, 2, 0}); !errors.Is(err, ErrTooOld) || !strings.Contains(err.Error(), "found libvirt 5.10.0") {
		t.Errorf("CheckBackup(5.10.0) = %v", err)
	}
}

func TestCephReason(t *testing.T) {
	disks := []*ferryv1.SourceDisk{{Target: "vda", Path: "/var/lib/libvirt/images/a.qcow2"}, {Target: "vdb", Path: "rbd:pool/data"}}
	all := func(string) bool { return true }
	onlyVda := func(d string) bool { return d == "vda" }
	for _, tt := range []struct {
		target bool
		copies func(string) bool
		want   string
	}{
		{false, all, "source disk vdb is the RBD image pool/data"},
		{false, onlyVda, ""},
		{true, onlyVda, "the target primary storage is Ceph"},
	} {
		if got := CephReason(tt.target, disks, tt.copies); got != tt.want {
			t.Errorf("CephReason(%v) = %q, want %q", tt.target, got, tt.want)
		}
	}
}

// TestChoose: the copy method for each version pair and VM state, and the
// line the preview shows for it, names both versions.
func TestChoose(t *testing.T) {
	const (
		running = ferryv1.SourceVmState_SOURCE_VM_STATE_RUNNING
		paused  = ferryv1.SourceVmState_SOURCE_VM_STATE_PAUSED
		off     = ferryv1.SourceVmState_SOURCE_VM_STATE_SHUT_OFF
		unknown = ferryv1.SourceVmState_SOURCE_VM_STATE_UNSPECIFIED
	)
	const snapshotWhy = "the backup API needs libvirt 6.0.0 and QEMU 4.2.0: an external disk-only snapshot holds the original images " +
		"still while they are read, then an active block commit merges the VM's writes back (libvirt 1.2.9 and QEMU 1.1.0 suffice)"
	for _, tt := range []struct {
		lib, qemu string
		state     ferryv1.SourceVmState
		method    Method
		err       error
		want      string
	}{
		{"1.2.9", "1.1", running, MethodSnapshot, nil,
			"libvirt 1.2.9, QEMU 1.1.0: snapshot because the VM is running and " + snapshotWhy},
		{"1.2.9", "1.1", paused, MethodSnapshot, nil,
			"libvirt 1.2.9, QEMU 1.1.0: snapshot because the VM is paused and " + snapshotWhy},
		{"1.2.8", "1.1", running, MethodRefused, ErrTooOld,
			"libvirt 1.2.8, QEMU 1.1.0: refused because a migration needs libvirt 1.2.9 or newer"},
		{"1.2.9", "1.0.1", off, MethodRefused, ErrTooOld,
			"libvirt 1.2.9, QEMU 1.0.1: refused because a migration needs QEMU 1.1.0 or newer"},
		{"1.2.8", "1.0", running, MethodRefused, ErrTooOld,
			"libvirt 1.2.8, QEMU 1.0.0: refused because a migration needs libvirt 1.2.9 and QEMU 1.1.0 or newer"},
		{"6.0.0", "4.2.0", running, MethodBackup, nil,
			"libvirt 6.0.0, QEMU 4.2.0: backup API because the VM is running and libvirt 6.0.0 with QEMU 4.2.0 or newer have the backup API"},
		{"6.0.0", "4.2.0", paused, MethodBackup, nil,
			"libvirt 6.0.0, QEMU 4.2.0: backup API because the VM is paused and libvirt 6.0.0 with QEMU 4.2.0 or newer have the backup API"},
		{"5.10.0", "4.2.0", running, MethodSnapshot, nil,
			"libvirt 5.10.0, QEMU 4.2.0: snapshot because the VM is running and " + snapshotWhy},
		{"6.0.0", "4.1.1", running, MethodSnapshot, nil,
			"libvirt 6.0.0, QEMU 4.1.1: snapshot because the VM is running and " + snapshotWhy},
		{"5.6.0", "3.1.0", off, MethodCold, nil,
			"libvirt 5.6.0, QEMU 3.1.0: cold image read because the VM is shut off: its images are read through a read-only qemu-nbd " +
				"(QEMU 2.10.0 or newer), no backup API needed"},
		{"1.2.9", "2.10", off, MethodCold, nil,
			"libvirt 1.2.9, QEMU 2.10.0: cold image read because the VM is shut off: its images are read through a read-only qemu-nbd " +
				"(QEMU 2.10.0 or newer), no backup API needed"},
		{"1.2.9", "2.9.1", off, MethodRefused, ErrTooOld,
			"libvirt 1.2.9, QEMU 2.9.1: refused because the VM is shut off and its images are read through qemu-nbd with force-share, " +
				"which needs QEMU 2.10.0 or newer (reading the image files without qemu-nbd is not implemented yet)"},
		{"5.0.0", "4.0.0", unknown, MethodAtStart, nil,
			"libvirt 5.0.0, QEMU 4.0.0: chosen when the job starts because the VM's state is not in the synced inventory; " +
				"a running VM gets the backup API (libvirt 6.0.0 and QEMU 4.2.0) or else the snapshot method, a shut-off one needs QEMU 2.10.0"},
		{"1.0.0", "4.0.0", unknown, MethodRefused, ErrTooOld,
			"libvirt 1.0.0, QEMU 4.0.0: refused because a migration needs libvirt 1.2.9 or newer"},
	} {
		lib, _ := Parse(tt.lib)
		qemu, _ := Parse(tt.qemu)
		c := Choose(lib, qemu, tt.state)
		if c.Method != tt.method || c.String() != tt.want || !errors.Is(c.Err, tt.err) || (tt.err == nil) != (c.Err == nil) {
			t.Errorf("Choose(%s, %s, %s) = %v, %q, %v\nwant %v, %q, %v", tt.lib, tt.qemu, tt.state, c.Method, c, c.Err, tt.method, tt.want, tt.err)
		}
		if err := c.Error(); (err == nil) != (tt.err == nil) || err != nil && (!errors.Is(err, tt.err) || err.Error() != tt.err.Error()+": "+tt.want) {
			t.Errorf("Choose(%s, %s, %s).Error() = %v", tt.lib, tt.qemu, tt.state, err)
		}
	}
}

// TestNotRoot: a non-root SSH user's VM that would get the backup API gets
// the snapshot method, saying why; every other choice stays as it was.
func TestNotRoot(t *testing.T) {
	lib, _ := Parse("9.0.0")
	qemu, _ := Parse("7.2.0")
	c := NotRoot(Choose(lib, qemu, ferryv1.SourceVmState_SOURCE_VM_STATE_RUNNING), "ferry")
	want := "libvirt 9.0.0, QEMU 7.2.0: snapshot because the SSH user ferry is not root: the backup API's NBD socket is out of its reach, " +
		"the snapshot method needs only libvirt and the images (read access, or qemu-nbd through sudo)"
	if c.Method != MethodSnapshot || c.String() != want || c.Err != nil {
		t.Errorf("NotRoot(backup) = %v, %q, %v\nwant snapshot, %q", c.Method, c, c.Err, want)
	}
	for _, state := range []ferryv1.SourceVmState{ferryv1.SourceVmState_SOURCE_VM_STATE_SHUT_OFF, ferryv1.SourceVmState_SOURCE_VM_STATE_UNSPECIFIED} {
		if c, orig := NotRoot(Choose(lib, qemu, state), "ferry"), Choose(lib, qemu, state); c.String() != orig.String() {
			t.Errorf("NotRoot(%s) = %q, want it unchanged: %q", state, c, orig)
		}
	}
	old, _ := Parse("5.0.0")
	if c, orig := NotRoot(Choose(old, qemu, ferryv1.SourceVmState_SOURCE_VM_STATE_RUNNING), "ferry"), Choose(old, qemu, ferryv1.SourceVmState_SOURCE_VM_STATE_RUNNING); c.String() != orig.String() {
		t.Errorf("NotRoot(snapshot) = %q, want it unchanged: %q", c, orig)
	}
}
