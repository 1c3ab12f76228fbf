package api_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ferry-v2v/ferry/agent/agenttest"
	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	"github.com/ferry-v2v/ferry/coordinator/internal/testcluster"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// seedTarget creates a target cluster with NFS storage and a network.
func (w *vmwareWorld) seedTarget(ctx context.Context) {
	w.t.Helper()
	inv := w.cl.TargetInventory()
	if _, err := inv.CreateCluster(ctx, &ferryv1.CreateClusterRequest{Cluster: &ferryv1.Cluster{Name: "clusters/c1"}}); err != nil {
		w.t.Fatal(err)
	}
	if _, err := inv.CreatePrimaryStorage(ctx, &ferryv1.CreatePrimaryStorageRequest{PrimaryStorage: &ferryv1.PrimaryStorage{
		Name: "primaryStorages/nfs", Cluster: "clusters/c1", Type: ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_NFS, Path: "/mnt/nfs"}}); err != nil {
		w.t.Fatal(err)
	}
	if _, err := inv.CreateL3Network(ctx, &ferryv1.CreateL3NetworkRequest{L3Network: &ferryv1.L3Network{Name: "l3Networks/n1", Cluster: "clusters/c1",
		Bridge: "br0", IpRangeStart: "10.0.0.10", IpRangeEnd: "10.0.0.50", Gateway: "10.0.0.1", PrefixLength: 24}}); err != nil {
		w.t.Fatal(err)
	}
}

// vmID is the managed object id of the simulator's VM named name.
func (w *vmwareWorld) vmID(name string) string {
	for _, e := range w.sim.Model.Map().All("VirtualMachine") {
		if e.Entity().Name == name {
			return e.Reference().Value
		}
	}
	w.t.Fatalf("vcsim has no VM %s", name)
	return ""
}

// diskKey is the device key of the first disk of the VM named, or with
// the id, vm; "2000" for a VM vcsim does not have.
func (w *vmwareWorld) diskKey(vm string) string {
	for _, e := range w.sim.Model.Map().All("VirtualMachine") {
		if e.Entity().Name == vm || e.Reference().Value == vm {
			for _, d := range e.(*simulator.VirtualMachine).Config.Hardware.Device {
				if disk, ok := d.(*types.VirtualDisk); ok {
					return strconv.Itoa(int(disk.Key))
				}
			}
		}
	}
	return "2000"
}

func (w *vmwareWorld) create(ctx context.Context, server, vm string) error {
	_, err := w.cl.Jobs().CreateMigrationJobs(ctx, &ferryv1.CreateMigrationJobsRequest{Source: w.source, MigrationServer: server,
		Jobs: []*ferryv1.MigrationJobSpec{{SourceVm: vm, Target: &ferryv1.TargetVm{
			VmName: "t-" + vm, Cluster: "clusters/c1", PrimaryStorage: "primaryStorages/nfs", Cpus: 1, MemoryBytes: 64 << 20,
			Disks: []*ferryv1.TargetDisk{{SourceDisk: w.diskKey(vm), SizeBytes: 1 << 30}},
			Nics:  []*ferryv1.TargetNic{{Mac: "52:54:00:aa:00:01", L3Network: "l3Networks/n1"}}}}}})
	return err
}

// TestVMwarePrechecks refuses, with FAILED_PRECONDITION and one line
// naming the job and VM, each thing the pre-checks look for as vcsim is
// changed, and creates nothing; once all is undone the same job is made.
func TestVMwarePrechecks(t *testing.T) {
	w := newVMwareWorld(t, 1, nil)
	ctx := testcluster.Ctx(t, 90*time.Second)
	w.seedTarget(ctx)
	creds := w.c.AgentCredentials("kvm1")
	agenttest.Start(t, agenttest.Options{Coordinators: []string{w.c.Nodes()[0].Addr()}, HostName: "kvm1", Cluster: "c1", Credentials: creds})
	testcluster.Eventually(t, 10*time.Second, "the kvm agent registers", func() bool {
		_, err := w.cl.TargetInventory().GetHost(ctx, &ferryv1.GetHostRequest{Name: "hosts/kvm1"})
		return err == nil
	})
	if _, err := w.cl.MigrationServers().CreateMigrationServer(ctx, &ferryv1.CreateMigrationServerRequest{MigrationServer: &ferryv1.MigrationServer{
		Name: "migrationServers/kvm", Host: "hosts/kvm1", Type: ferryv1.Platform_PLATFORM_KVM, CachePath: t.TempDir()}}); err != nil {
		t.Fatal(err)
	}
	vc := w.sim.Client(ctx, t)
	clusterVM := w.sim.VM(ctx, t, "DC0_C0_RP0_VM0")
	clusterHost := object.NewHostSystem(vc.Client, w.sim.HostOf(clusterVM.Reference()).Self)
	tmpl := w.sim.VM(ctx, t, "DC0_H0_VM1")
	vm0 := w.sim.Model.Map().Get(types.ManagedObjectReference{Type: "VirtualMachine", Value: w.vmID("DC0_H0_VM0")}).(*simulator.VirtualMachine)
	disk := vm0.Config.Hardware.Device[0]
	for _, d := range vm0.Config.Hardware.Device {
		if _, ok := d.(*types.VirtualDisk); ok {
			disk = d
		}
	}
	backing := disk.(*types.VirtualDisk).Backing.(*types.VirtualDiskFlatVer2BackingInfo)

	// A full spec for a VM the synced inventory lacks is NOT_FOUND. The
	// create syncs the source again to look for it, but being refused,
	// records nothing: the applied index stays where it was.
	// (Agents' host facts may be refreshed meanwhile, so the ledger is
	// compared where the create would write: the source's sync record and
	// the jobs.)
	leader := w.c.Leader(5 * time.Second).Server
	// The source's first sync (on registration, in the background) comes
	// first: it is not the create's to record.
	testcluster.Eventually(t, 30*time.Second, "the source's first sync", func() bool {
		s, ok := leader.Ledger().Source("sources/vc")
		return ok && s.GetLastSyncAttemptTime() != nil
	})
	srcBefore, _ := leader.Ledger().Source("sources/vc")
	err := w.create(ctx, w.server, "vm-9999")
	if msg := status.Convert(err).Message(); status.Code(err) != codes.NotFound ||
		!strings.HasPrefix(msg, `jobs[0].source_vm: VM "vm-9999" is not in the inventory of sources/vc synced at `) {
		t.Fatalf("create for an unknown VM: %v; want NOT_FOUND naming jobs[0].source_vm", err)
	}
	if srcAfter, _ := leader.Ledger().Source("sources/vc"); !proto.Equal(srcBefore, srcAfter) {
		t.Fatalf("a refused create recorded a sync of the source: %v, then %v", srcBefore, srcAfter)
	}
	if jobs := leader.Ledger().Jobs(ledger.JobFilter{}); len(jobs) != 0 {
		t.Fatalf("a refused create left %d jobs", len(jobs))
	}
	for _, tc := range []struct {
		name, server, vm string
		setup, undo      func()
		want             []string
	}{
		{"template", w.server, w.vmID("DC0_H0_VM1"), func() {
			if task, err := tmpl.PowerOff(ctx); err != nil || task.Wait(ctx) != nil {
				t.Fatal("power off", err)
			}
			if err := tmpl.MarkAsTemplate(ctx); err != nil {
				t.Fatal(err)
			}
		}, nil, []string{"(VM DC0_H0_VM1, " + w.vmID("DC0_H0_VM1") + "): the VM is a template"}},
		{"host in maintenance", w.server, "DC0_C0_RP0_VM0", func() {
			if _, err := clusterHost.EnterMaintenanceMode(ctx, 0, false, nil); err != nil {
				t.Fatal(err)
			}
		}, func() {
			if _, err := clusterHost.ExitMaintenanceMode(ctx, 0); err != nil {
				t.Fatal(err)
			}
		}, []string{"jobs[0] (VM DC0_C0_RP0_VM0, " + clusterVM.Reference().Value + "): its host " + w.sim.HostOf(clusterVM.Reference()).Name + " is in maintenance mode"}},
		{"independent disk", w.server, "DC0_H0_VM0", func() { backing.DiskMode = string(types.VirtualDiskModeIndependent_persistent) },
			func() { backing.DiskMode = string(types.VirtualDiskModePersistent) },
			[]string{"(VM DC0_H0_VM0, " + vm0.Self.Value + "): disk " + itoa(disk.GetVirtualDevice().Key) + " is in independent_persistent mode"}},
		{"server of another type", "migrationServers/kvm", "DC0_H0_VM0", nil, nil,
			[]string{"migration_server: migrationServers/kvm is a kvm migration server but source sources/vc is vmware; use a vmware migration server"}},
		{"vCenter and ESXi versions differ", w.server, "DC0_H0_VM0", func() { w.sim.SetVCenterVersion("7.0.3") },
			func() { w.sim.SetVCenterVersion("8.0.2") },
			[]string{"(VM DC0_H0_VM0, " + vm0.Self.Value + "): ESXi host DC0_H0 is version 8.0.2 but its vCenter is version 7.0.3"}},
		{"ESXi older than 5.0", w.server, "DC0_H0_VM0", func() { w.sim.SetHostVersion(t, "DC0_H0", "4.1.0") },
			func() { w.sim.SetHostVersion(t, "DC0_H0", "8.0.2") }, []string{
				"(VM DC0_H0_VM0, " + vm0.Self.Value + "): ESXi host DC0_H0 is version 4.1.0; 5.0 or newer is needed",
				"(VM DC0_H0_VM0, " + vm0.Self.Value + "): ESXi host DC0_H0 is version 4.1.0 but its vCenter is version 8.0.2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.setup != nil {
				tc.setup()
			}
			if tc.undo != nil {
				defer tc.undo()
			}
			if _, err := w.cl.Sources().SyncSource(ctx, &ferryv1.SyncSourceRequest{Name: w.source}); err != nil {
				t.Fatalf("SyncSource: %v", err)
			}
			err := w.create(ctx, tc.server, tc.vm)
			msg := status.Convert(err).Message()
			if status.Code(err) != codes.FailedPrecondition || strings.Count(msg, "\n") != len(tc.want) {
				t.Fatalf("create: %v; want FAILED_PRECONDITION with %d line(s)", err, len(tc.want))
			}
			for _, line := range tc.want {
				if !strings.Contains(msg, line) {
					t.Errorf("message %q lacks %q", msg, line)
				}
			}
			if jobs, err := w.cl.Jobs().ListMigrationJobs(ctx, &ferryv1.ListMigrationJobsRequest{}); err != nil || len(jobs.GetJobs()) != 0 {
				t.Fatalf("jobs after a refused create: %v, %v", jobs.GetJobs(), err)
			}
		})
	}
	// Every change undone (but the template): the job is created.
	if _, err := w.cl.Sources().SyncSource(ctx, &ferryv1.SyncSourceRequest{Name: w.source}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.cl.MigrationServers().DisableMigrationServer(ctx, &ferryv1.DisableMigrationServerRequest{Name: w.server}); err != nil {
		t.Fatal(err)
	}
	if err := w.create(ctx, w.server, "DC0_H0_VM0"); err != nil {
		t.Fatalf("create once the checks pass: %v", err)
	}
}

func itoa(n int32) string { return strconv.Itoa(int(n)) }

// TestCreateReadsAVMMadeSinceTheLastSync: a VM made in vCenter after the
// source's last sync is not refused as unknown; creating its job syncs the
// inventory again. A preview, which writes nothing, does not.
func TestCreateReadsAVMMadeSinceTheLastSync(t *testing.T) {
	w := newVMwareWorld(t, 1, nil)
	ctx := testcluster.Ctx(t, 90*time.Second)
	w.seedTarget(ctx)
	// A host of the target cluster for the job's VM.
	agenttest.Start(t, agenttest.Options{Coordinators: []string{w.c.Nodes()[0].Addr()}, HostName: "kvm1", Cluster: "c1", Credentials: w.c.AgentCredentials("kvm1")})
	testcluster.Eventually(t, 10*time.Second, "the kvm agent registers", func() bool {
		h, err := w.cl.TargetInventory().GetHost(ctx, &ferryv1.GetHostRequest{Name: "hosts/kvm1"})
		return err == nil && h.GetConnected()
	})
	if _, err := w.cl.Sources().SyncSource(ctx, &ferryv1.SyncSourceRequest{Name: w.source}); err != nil {
		t.Fatalf("SyncSource: %v", err)
	}
	vm0 := w.sim.VM(ctx, t, "DC0_H0_VM0")
	folders, err := object.NewDatacenter(vm0.Client(), w.sim.Model.Map().Any("Datacenter").Reference()).Folders(ctx)
	if err != nil {
		t.Fatal(err)
	}
	task, err := vm0.Clone(ctx, folders.VmFolder, "late-vm", types.VirtualMachineCloneSpec{})
	if err != nil || task.Wait(ctx) != nil {
		t.Fatalf("clone: %v", err)
	}
	id := w.vmID("late-vm")
	req := &ferryv1.CreateMigrationJobsRequest{Source: w.source, MigrationServer: w.server,
		Jobs: []*ferryv1.MigrationJobSpec{{SourceVm: id, Target: &ferryv1.TargetVm{
			VmName: "t-late", Cluster: "clusters/c1", PrimaryStorage: "primaryStorages/nfs", Cpus: 1, MemoryBytes: 64 << 20,
			Disks: []*ferryv1.TargetDisk{{SourceDisk: w.diskKey(id), SizeBytes: 1 << 30}},
			Nics:  []*ferryv1.TargetNic{{Mac: "52:54:00:aa:00:02", L3Network: "l3Networks/n1"}}}}}}
	prev, err := w.cl.Jobs().PreviewMigrationJobs(ctx, &ferryv1.PreviewMigrationJobsRequest{Source: req.Source,
		MigrationServer: req.MigrationServer, Jobs: req.Jobs})
	if err != nil {
		t.Fatal(err)
	}
	if lines := strings.Join(prev.GetFailedChecks(), "\n"); !strings.Contains(lines, "is not in the inventory") {
		t.Errorf("preview before a sync: failed checks %q, want the VM unknown to the inventory", lines)
	}
	resp, err := w.cl.Jobs().CreateMigrationJobs(ctx, req)
	if err != nil {
		t.Fatalf("create a job of a VM made since the last sync: %v", err)
	}
	if got := resp.GetJobs()[0].GetSourceVm(); got != id {
		t.Errorf("job source_vm = %q, want %q", got, id)
	}
}
