package kvm

import (
	"testing"

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
