package api

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

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
				ApiType: "libvirt", QemuVersion: qemu},
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

// TestKVMVersionPrechecks: the agent's version rules run in the pre-checks
// of preview and create, on the versions and VM state of the source's last
// sync. The preview notes the copy method each job gets and why, naming
// both versions; a source below libvirt 1.2.9 / QEMU 1.1 is refused with
// both named; from there a running VM without the backup API gets the
// snapshot method, noted with both versions; a shut-off VM needs only the cold copy's QEMU 2.10. The
// Ceph rule counts a copied source disk that is an RBD image, not only a
// Ceph target storage.
func TestKVMVersionPrechecks(t *testing.T) {
	const p = "jobs[0] (VM vm-0): source sources/kvm: "
	const snapshot = ": snapshot because the VM is running and the backup API needs libvirt 6.0.0 and QEMU 4.2.0: " +
		"an external disk-only snapshot holds the original images still while they are read, then an active block commit " +
		"merges the VM's writes back (libvirt 1.2.9 and QEMU 1.1.0 suffice)"
	const ceph = p + "libvirt 1.2.15 found, 1.2.16 or newer needed with Ceph storage " +
		"(source disk vdb is the RBD image pool/vm-0-data); upgrade the source host first"
	const backupWhy = ": backup API because the VM is running and libvirt 6.0.0 with QEMU 4.2.0 or newer have the backup API"
	rbd := kvmVM()
	rbd.Disks[1].Path = "rbd:pool/vm-0-data"
	off := kvmVM()
	off.State = ferryv1.SourceVmState_SOURCE_VM_STATE_SHUT_OFF
	withVdb := func(r *ferryv1.CreateMigrationJobsRequest) {
		r.Jobs[0].Target.Disks = append(r.Jobs[0].Target.Disks, &ferryv1.TargetDisk{SourceDisk: "vdb", SizeBytes: gib})
	}
	none := func(*ferryv1.CreateMigrationJobsRequest) {}
	for _, tt := range []struct {
		name      string
		lib, qemu string
		vm        *ferryv1.SourceVm
		edit      func(*ferryv1.CreateMigrationJobsRequest)
		want      []string // failed checks
		note      string   // the copy method's note, "" for none
	}{
		{"new enough", "9.0.0", "7.2.0", rbd, withVdb, nil, p + "libvirt 9.0.0, QEMU 7.2.0" + backupWhy},
		{"backup API from 6.0/4.2", "6.0.0", "4.2.0", kvmVM(), none, nil, p + "libvirt 6.0.0, QEMU 4.2.0" + backupWhy},
		{"oldest supported, running", "1.2.9", "1.1", kvmVM(), none, nil, p + "libvirt 1.2.9, QEMU 1.1.0" + snapshot},
		{"below the oldest", "1.2.8", "1.0", kvmVM(), none, []string{p + "libvirt 1.2.8, QEMU 1.0.0: refused because a migration needs " +
			"libvirt 1.2.9 and QEMU 1.1.0 or newer; upgrade the source host first"}, ""},
		{"5.x running", "5.10.0", "4.1.0", kvmVM(), none, nil, p + "libvirt 5.10.0, QEMU 4.1.0" + snapshot},
		{"5.x shut off", "5.10.0", "4.1.0", off, none, nil, p + "libvirt 5.10.0, QEMU 4.1.0: cold image read because the VM is shut off: " +
			"its images are read through a read-only qemu-nbd (QEMU 2.10.0 or newer), no backup API needed"},
		{"shut off, no force-share", "1.2.9", "2.9.0", off, none, []string{p + "libvirt 1.2.9, QEMU 2.9.0: refused because the VM is shut off " +
			"and its images are read through qemu-nbd with force-share, which needs QEMU 2.10.0 or newer " +
			"(reading the image files without qemu-nbd is not implemented yet); upgrade the source host first"}, ""},
		{"old, file disks", "1.2.15", "2.0.0", kvmVM(), withVdb, nil, p + "libvirt 1.2.15, QEMU 2.0.0" + snapshot},
		{"old, RBD source disk copied", "1.2.15", "2.0.0", rbd, withVdb, []string{ceph}, p + "libvirt 1.2.15, QEMU 2.0.0" + snapshot},
		{"old, RBD source disk left out", "1.2.15", "2.0.0", rbd, none, nil, p + "libvirt 1.2.15, QEMU 2.0.0" + snapshot},
		// An inventory from an older agent lists no shut-off VMs: the agent
		// chooses once it sees the VM's state.
		{"VM not in the inventory", "5.0.0", "4.0.0", nil, none, nil, "jobs[0]: source sources/kvm: libvirt 5.0.0, QEMU 4.0.0: " +
			"chosen when the job starts because the VM's state is not in the synced inventory; " +
			"a running VM gets the backup API (libvirt 6.0.0 and QEMU 4.2.0) or else the snapshot method, a shut-off one needs QEMU 2.10.0"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, true)
			e.seed()
			if tt.vm != nil {
				e.kvmInventory(tt.lib, tt.qemu, tt.vm)
			} else {
				e.kvmInventory(tt.lib, tt.qemu)
			}
			req := jobsReqWith(tt.edit)
			resp := must[*ferryv1.PreviewMigrationJobsResponse](t)(e.jobs.PreviewMigrationJobs(ctx(t), &ferryv1.PreviewMigrationJobsRequest{
				Source: req.GetSource(), MigrationServer: req.GetMigrationServer(), Jobs: req.GetJobs()}))
			if got := resp.GetFailedChecks(); strings.Join(got, "\n") != strings.Join(tt.want, "\n") || resp.GetFits() != (tt.want == nil) {
				t.Fatalf("preview failed checks (fits %v):\n%s\nwant:\n%s", resp.GetFits(), strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
			var notes []string
			for _, n := range resp.GetNotes() {
				if strings.HasPrefix(n, "jobs[0]") && strings.Contains(n, ": source sources/kvm: libvirt ") {
					notes = append(notes, n)
				}
			}
			if want := []string{tt.note}; tt.note == "" && len(notes) != 0 || tt.note != "" && !slices.Equal(notes, want) {
				t.Fatalf("preview copy method notes %q, want %q (all notes %q)", notes, tt.note, resp.GetNotes())
			}
			_, err := e.jobs.CreateMigrationJobs(ctx(t), req)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("create: %v", err)
				}
				return
			}
			wantCode(t, err, codes.FailedPrecondition, fmt.Sprintf("jobs: %d pre-check(s) failed; nothing was created:\n%s",
				len(tt.want), strings.Join(tt.want, "\n")))
		})
	}
}

// TestTargetKeepsSourceState: with auto_start unset, a paused source VM's
// target is defined but not started, and the preview says so; a running
// source's target starts; auto_start given is kept.
func TestTargetKeepsSourceState(t *testing.T) {
	e := newEnv(t, true)
	e.seed()
	paused := kvmVM()
	paused.State = ferryv1.SourceVmState_SOURCE_VM_STATE_PAUSED
	running := kvmVM()
	running.Id, running.Name = "vm-1", "vm-1"
	running.Nics[0].Mac = "52:54:00:00:00:01"
	e.kvmInventory("9.0.0", "7.2.0", paused, running)
	req := jobsReq(2)
	resp := must[*ferryv1.PreviewMigrationJobsResponse](t)(e.jobs.PreviewMigrationJobs(ctx(t), &ferryv1.PreviewMigrationJobsRequest{
		Source: req.GetSource(), MigrationServer: req.GetMigrationServer(), Jobs: req.GetJobs()}))
	const backup = " and libvirt 6.0.0 with QEMU 4.2.0 or newer have the backup API"
	wantNotes := []string{"jobs[0].options.auto_start: false: source VM vm-0 is paused, so its target target-0 is defined but not started; " +
		"set auto_start true (ferryctl --start) to start it",
		"jobs[0] (VM vm-0): source sources/kvm: libvirt 9.0.0, QEMU 7.2.0: backup API because the VM is paused" + backup,
		"jobs[1] (VM vm-1): source sources/kvm: libvirt 9.0.0, QEMU 7.2.0: backup API because the VM is running" + backup}
	if strings.Join(resp.GetNotes(), "\n") != strings.Join(wantNotes, "\n") {
		t.Fatalf("notes = %q, want %q", resp.GetNotes(), wantNotes)
	}
	var starts []bool
	for _, j := range resp.GetJobs() {
		starts = append(starts, j.GetOptions().GetAutoStart())
	}
	if fmt.Sprint(starts) != "[false true]" {
		t.Fatalf("previewed auto_start = %v, want [false true]", starts)
	}
	// The paused VM's target is not counted among the VMs started.
	for _, u := range resp.GetUsages() {
		if u.GetKind() == ferryv1.PreviewResourceKind_PREVIEW_RESOURCE_KIND_VCPUS && u.GetRequested() != 2 {
			t.Errorf("vCPUs requested %d, want 2 (only vm-1 starts): %s", u.GetRequested(), u.GetNote())
		}
	}

	created := must[*ferryv1.CreateMigrationJobsResponse](t)(e.jobs.CreateMigrationJobs(ctx(t), req)).GetJobs()
	if created[0].GetOptions().AutoStart == nil || created[0].GetOptions().GetAutoStart() || !created[1].GetOptions().GetAutoStart() {
		t.Fatalf("created options %v and %v, want auto_start false then true", created[0].GetOptions(), created[1].GetOptions())
	}

	// auto_start given wins over the source's state.
	req = jobsReqWith(func(r *ferryv1.CreateMigrationJobsRequest) {
		r.Jobs[0].Target.VmName = "target-again"
		r.Jobs[0].Options = &ferryv1.MigrationOptions{AutoStart: proto.Bool(true)}
	})
	again := must[*ferryv1.CreateMigrationJobsResponse](t)(e.jobs.CreateMigrationJobs(ctx(t), req)).GetJobs()[0]
	if !again.GetOptions().GetAutoStart() {
		t.Fatalf("auto_start true given, created %v", again.GetOptions())
	}

	// verify_boot starts the paused VM's target, with no note of its own
	// (the copy method's note stays).
	req = jobsReqWith(func(r *ferryv1.CreateMigrationJobsRequest) {
		r.Jobs[0].Target.VmName = "target-booted"
		r.Jobs[0].Options = &ferryv1.MigrationOptions{VerifyBoot: true}
	})
	p := must[*ferryv1.PreviewMigrationJobsResponse](t)(e.jobs.PreviewMigrationJobs(ctx(t), &ferryv1.PreviewMigrationJobsRequest{
		Source: req.GetSource(), MigrationServer: req.GetMigrationServer(), Jobs: req.GetJobs()}))
	if len(p.GetNotes()) != 1 || !strings.Contains(p.GetNotes()[0], "backup API because the VM is paused") || !p.GetJobs()[0].GetOptions().GetAutoStart() {
		t.Fatalf("verify_boot previewed options %v, notes %q; want auto_start true, only the copy method's note", p.GetJobs()[0].GetOptions(), p.GetNotes())
	}
}
