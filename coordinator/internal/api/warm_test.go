package api

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// TestWarmPrechecks: a warm job of a KVM VM is refused at preview and
// create, saying why, when a disk it copies is not qcow2 (it cannot carry
// the dirty bitmaps of checkpoints) or the VM is shut off; a qcow2 running
// VM passes, and create stamps the settings' precopy interval on it.
func TestWarmPrechecks(t *testing.T) {
	e := newEnv(t, true)
	e.seed()
	raw := kvmVM()
	raw.Id, raw.Name = "vm-raw", "vm-raw"
	raw.Disks[0].Format, raw.Disks[1].Format = "raw", "qcow2"
	off := kvmVM()
	off.Id, off.Name, off.State = "vm-off", "vm-off", ferryv1.SourceVmState_SOURCE_VM_STATE_SHUT_OFF
	off.Disks[0].Format = "qcow2"
	ok := kvmVM()
	ok.Disks[0].Format = "qcow2"
	e.kvmInventory("9.0.0", "7.2.0", ok, raw, off)
	warm := func(vm string) *ferryv1.CreateMigrationJobsRequest {
		req := jobsReq(1)
		req.Jobs[0].SourceVm = vm
		req.Jobs[0].Options = &ferryv1.MigrationOptions{Mode: ferryv1.MigrationMode_MIGRATION_MODE_WARM}
		return req
	}
	for _, tt := range []struct{ vm, want string }{
		{"vm-raw", "jobs[0].options.mode (VM vm-raw): warm migration needs qcow2 disks, whose dirty bitmaps track the changes " +
			"between rounds; disk vda (raw) cannot carry dirty bitmaps (use mode live, or convert the disk to qcow2)"},
		{"vm-off", "jobs[0].options.mode (VM vm-off): warm migration copies a running VM in rounds, but it is shut off " +
			"(use mode live for a one-time copy)"},
	} {
		got := e.previewFailed(warm(tt.vm))
		if !slicesContain(got, tt.want) {
			t.Errorf("preview of warm %s: failed checks %q; want %q", tt.vm, got, tt.want)
		}
		_, err := e.jobs.CreateMigrationJobs(ctx(t), warm(tt.vm))
		wantCode(t, err, codes.FailedPrecondition, "jobs: ")
		if err != nil && !strings.Contains(err.Error(), tt.want) {
			t.Errorf("create of warm %s: %v; want it to say %q", tt.vm, err, tt.want)
		}
	}
	if got := e.previewFailed(warm("vm-0")); len(got) != 0 {
		t.Fatalf("preview of a warm qcow2 running VM failed: %q", got)
	}
	resp, err := e.jobs.CreateMigrationJobs(ctx(t), warm("vm-0"))
	if err != nil {
		t.Fatal(err)
	}
	j := resp.GetJobs()[0]
	if d := j.GetOptions().GetPrecopyInterval(); !durationEq(d, 30*time.Minute) {
		t.Errorf("precopy_interval = %v; want the settings' 30m", d)
	}

	// A cutover later, then at once: the leader stamps its own time.
	later := time.Date(2040, 1, 2, 3, 4, 5, 0, time.UTC)
	got, err := e.jobs.CutoverMigrationJob(ctx(t), &ferryv1.CutoverMigrationJobRequest{Name: j.GetName(), CutoverTime: timestamppb.New(later)})
	if err != nil || !got.GetJob().GetOptions().GetCutoverTime().AsTime().Equal(later) {
		t.Fatalf("cutover at %v: %v, %v", later, got.GetJob().GetOptions().GetCutoverTime(), err)
	}
	got, err = e.jobs.CutoverMigrationJob(ctx(t), &ferryv1.CutoverMigrationJobRequest{Name: j.GetName()})
	if at := got.GetJob().GetOptions().GetCutoverTime(); err != nil || at == nil || !at.AsTime().Before(later) {
		t.Fatalf("cutover now: %v, %v; want the leader's time", at, err)
	}
}

func slicesContain(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

func durationEq(d *durationpb.Duration, want time.Duration) bool {
	return d != nil && d.AsDuration() == want
}

// TestWarmVMwarePrechecks: a warm job of a VMware VM whose changed-block
// tracking is off is refused at preview and create, naming enable_cbt,
// unless the job sets it; one whose tracking is on passes without it.
func TestWarmVMwarePrechecks(t *testing.T) {
	e := newEnv(t, true)
	e.seed()
	vm := func(id string, cbt bool) *ferryv1.SourceVm {
		return &ferryv1.SourceVm{Id: id, Name: id, State: ferryv1.SourceVmState_SOURCE_VM_STATE_RUNNING, Host: "esx1", Cpus: 1,
			MemoryBytes: gib, CbtEnabled: cbt, Disks: []*ferryv1.SourceDisk{{Target: "2000", CapacityBytes: gib}},
			Nics: []*ferryv1.SourceNic{{Mac: "00:50:56:00:00:01"}}}
	}
	e.apply(&ledgerv1.Command{Op: &ledgerv1.Command_RecordSourceSync{RecordSourceSync: &ledgerv1.RecordSourceSync{
		Source: "sources/vc", Inventory: &ferryv1.SourceInventory{
			Product: &ferryv1.SourceProduct{FullName: "VMware vCenter Server 8.0.0", Version: "8.0.0", ApiType: "VirtualCenter"},
			Hosts:   []*ferryv1.SourceHost{{Id: "host-1", Name: "esx1", Version: "8.0.0"}},
			Vms:     []*ferryv1.SourceVm{vm("vm-off", false), vm("vm-on", true)}}}}})
	warm := func(id string, enable bool) *ferryv1.CreateMigrationJobsRequest {
		req := &ferryv1.CreateMigrationJobsRequest{Source: "sources/vc", MigrationServer: "migrationServers/vmw", Jobs: []*ferryv1.MigrationJobSpec{{
			SourceVm: id, Options: &ferryv1.MigrationOptions{Mode: ferryv1.MigrationMode_MIGRATION_MODE_WARM, EnableCbt: enable,
				GuestConversion: ferryv1.GuestConversion_GUEST_CONVERSION_OFF},
			Target: &ferryv1.TargetVm{VmName: "t-" + id, Cluster: "clusters/c1", PrimaryStorage: "primaryStorages/nfs", Cpus: 1,
				MemoryBytes: gib, Disks: []*ferryv1.TargetDisk{{SourceDisk: "2000", SizeBytes: gib}},
				Nics: []*ferryv1.TargetNic{{SourceMac: "00:50:56:00:00:01", L3Network: "l3Networks/net1"}}}}}}
		return req
	}
	want := "jobs[0].options.enable_cbt (VM vm-off, vm-off): changed-block tracking is off on the VM, and a warm job copies " +
		"only what it tracked between rounds; set enable_cbt to let Ferry turn it on, or turn it on in vSphere and sync the source"
	if got := e.previewFailed(warm("vm-off", false)); len(got) != 1 || got[0] != want {
		t.Errorf("preview of a warm VM without CBT: failed checks %q; want %q", got, want)
	}
	_, err := e.jobs.CreateMigrationJobs(ctx(t), warm("vm-off", false))
	wantCode(t, err, codes.FailedPrecondition, "jobs: ")
	if err != nil && !strings.Contains(err.Error(), want) {
		t.Errorf("create of a warm VM without CBT: %v; want it to say %q", err, want)
	}
	for _, tt := range []struct {
		vm     string
		enable bool
	}{{"vm-off", true}, {"vm-on", false}} {
		if got := e.previewFailed(warm(tt.vm, tt.enable)); len(got) != 0 {
			t.Errorf("preview of warm %s, enable_cbt %v: failed checks %q; want none", tt.vm, tt.enable, got)
		}
	}
}
