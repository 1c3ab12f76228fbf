package api

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// kvmVM is vm-0 of spec(0) as a KVM source describes it: disks vda and
// vdb, one NIC with spec(0)'s source MAC.
func kvmVM() *ferryv1.SourceVm {
	return &ferryv1.SourceVm{Id: "vm-0", Name: "vm-0", State: ferryv1.SourceVmState_SOURCE_VM_STATE_RUNNING, Cpus: 2, MemoryBytes: 2 * gib,
		Disks: []*ferryv1.SourceDisk{{Target: "vda", Path: "/var/lib/libvirt/images/vm-0.qcow2", CapacityBytes: 10 * gib},
			{Target: "vdb", Path: "/var/lib/libvirt/images/vm-0-data.qcow2", CapacityBytes: gib}},
		Nics: []*ferryv1.SourceNic{{Mac: "52:54:00:00:00:00", Network: "default"}}}
}

// kvmInventory records a sync of sources/kvm that found vms on a host
// running libvirt lib and QEMU qemu.
func (e *env) kvmInventory(lib, qemu string, vms ...*ferryv1.SourceVm) {
	e.apply(&ledgerv1.Command{Op: &ledgerv1.Command_RecordSourceSync{RecordSourceSync: &ledgerv1.RecordSourceSync{
		Source: "sources/kvm", Inventory: &ferryv1.SourceInventory{
			Product: &ferryv1.SourceProduct{FullName: "libvirt " + lib + " (QEMU " + qemu + ")", Version: lib, ApiVersion: lib,
				ApiType: "libvirt"},
			Hosts: []*ferryv1.SourceHost{{Id: "192.0.2.10", Name: "src", Version: lib}},
			Vms:   vms}}}})
}

// previewFailed previews req and returns its failed checks.
func (e *env) previewFailed(req *ferryv1.CreateMigrationJobsRequest) []string {
	e.t.Helper()
	resp := must[*ferryv1.PreviewMigrationJobsResponse](e.t)(e.jobs.PreviewMigrationJobs(ctx(e.t), &ferryv1.PreviewMigrationJobsRequest{
		Source: req.GetSource(), MigrationServer: req.GetMigrationServer(), Jobs: req.GetJobs()}))
	if resp.GetFits() && len(resp.GetFailedChecks()) > 0 {
		e.t.Fatalf("preview fits with failed checks %q", resp.GetFailedChecks())
	}
	return resp.GetFailedChecks()
}

// TestSpecNamingWhatTheSourceLacks: a target disk or NIC naming a disk or
// MAC the source VM does not have is refused by the preview and by create,
// naming the field, what is missing and what the VM has.
func TestSpecNamingWhatTheSourceLacks(t *testing.T) {
	e := newEnv(t, true)
	e.seed()
	e.kvmInventory("9.0.0", "7.2.0", kvmVM())
	req := jobsReq(1)
	req.Jobs[0].Target.Disks = append(req.Jobs[0].Target.Disks, &ferryv1.TargetDisk{SourceDisk: "vdz", SizeBytes: gib})
	req.Jobs[0].Target.Nics = append(req.Jobs[0].Target.Nics, &ferryv1.TargetNic{SourceMac: "52:54:00:AA:BB:CC", L3Network: "l3Networks/net1"})
	want := []string{
		`jobs[0].target.disks[1].source_disk: source VM vm-0 has no disk "vdz" (it has vda, vdb)`,
		`jobs[0].target.nics[1].source_mac: source VM vm-0 has no NIC with MAC 52:54:00:aa:bb:cc (it has 52:54:00:00:00:00)`,
	}
	if got := e.previewFailed(req); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("preview failed checks:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	_, err := e.jobs.CreateMigrationJobs(ctx(t), req)
	wantCode(t, err, codes.FailedPrecondition, "jobs: 2 pre-check(s) failed; nothing was created:\n"+strings.Join(want, "\n"))

	// What the VM has passes.
	req = jobsReq(1)
	req.Jobs[0].Target.Disks = append(req.Jobs[0].Target.Disks, &ferryv1.TargetDisk{SourceDisk: "vdb", SizeBytes: gib})
	if got := e.previewFailed(req); len(got) != 0 {
		t.Fatalf("preview of disks the VM has failed: %q", got)
	}
}
