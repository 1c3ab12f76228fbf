package kvm

import (
	"errors"
	"testing"

	"github.com/ferry-v2v/ferry/pkg/kvmver"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// TestCephReason: the start-time check counts an RBD source disk the job
// copies, not only Ceph target storage.
func TestCephReason(t *testing.T) {
	vm := &VM{Name: "web1", Disks: []Disk{{Target: "vda", Path: "/var/lib/libvirt/images/web1.qcow2"}, {Target: "vdb", Path: "rbd:pool/web1-data"}}}
	job := func(storage ferryv1.PrimaryStorageType, disks ...string) *agentv1.Assignment {
		a := &agentv1.Assignment{Job: &ferryv1.MigrationJob{Target: &ferryv1.TargetVm{}}, PrimaryStorage: &ferryv1.PrimaryStorage{Type: storage}}
		for _, d := range disks {
			a.Job.Target.Disks = append(a.Job.Target.Disks, &ferryv1.TargetDisk{SourceDisk: d})
		}
		return a
	}
	nfs, ceph := ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_NFS, ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_CEPH
	for _, tt := range []struct {
		a    *agentv1.Assignment
		want string
	}{
		{job(nfs, "vda", "vdb"), "source disk vdb is the RBD image pool/web1-data"},
		{job(nfs, "vda"), ""},
		{job(ceph, "vda"), "the target primary storage is Ceph"},
	} {
		got := cephReason(tt.a, vm)
		if got != tt.want {
			t.Errorf("cephReason(%v) = %q, want %q", tt.a, got, tt.want)
		}
		err := checkVersions(ver(1, 2, 15), ver(2, 0, 0), got)
		if (err != nil) != (tt.want != "") {
			t.Errorf("checkVersions(1.2.15, %q) = %v", got, err)
		}
	}
}

// TestCopyMethodFromParsedVersions: the versions as libvirt reports them
// (major*1,000,000 + minor*1,000 + micro) decide the method: libvirt
// 1.2.9 with QEMU 1.1 gets the snapshot method for a running or paused
// VM; below either, the job is refused with both versions named.
func TestCopyMethodFromParsedVersions(t *testing.T) {
	for _, tt := range []struct {
		lib, qemu uint32
		state     string
		method    kvmver.Method
		err       string
	}{
		{1002009, 1001000, StateRunning, kvmver.MethodSnapshot, ""},
		{1002009, 1001000, StatePaused, kvmver.MethodSnapshot, ""},
		{5010000, 4001000, StateRunning, kvmver.MethodSnapshot, ""},
		{6000000, 4002000, StateRunning, kvmver.MethodBackup, ""},
		{1002008, 1001000, StateRunning, kvmver.MethodRefused,
			"source version too old: libvirt 1.2.8, QEMU 1.1.0: refused because a migration needs libvirt 1.2.9 or newer"},
		{1002009, 1000001, StateRunning, kvmver.MethodRefused,
			"source version too old: libvirt 1.2.9, QEMU 1.0.1: refused because a migration needs QEMU 1.1.0 or newer"},
		{1002008, 1000000, StatePaused, kvmver.MethodRefused,
			"source version too old: libvirt 1.2.8, QEMU 1.0.0: refused because a migration needs libvirt 1.2.9 and QEMU 1.1.0 or newer"},
	} {
		lib, qemu := versionOf(tt.lib), versionOf(tt.qemu)
		c := copyMethod(lib, qemu, tt.state)
		err := c.Error()
		if c.Method != tt.method || (err == nil) != (tt.err == "") || err != nil && (err.Error() != tt.err || !errors.Is(err, ErrVersion)) {
			t.Errorf("copyMethod(%s, %s, %s) = %v, %v; want %v, %q", lib, qemu, tt.state, c.Method, err, tt.method, tt.err)
		}
	}
}
