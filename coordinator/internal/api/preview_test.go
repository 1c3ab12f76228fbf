package api_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmware/govmomi/vim25/mo"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferry-v2v/ferry/agent/agenttest"
	"github.com/ferry-v2v/ferry/coordinator/internal/testcluster"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// previewWorld is a vmwareWorld with a target cluster c1 of two agents
// whose CPUs and available memory the test sets, NFS storage in a real
// directory the agents measure, and a network of five usable addresses.
type previewWorld struct {
	*vmwareWorld
	nfs string
}

const (
	previewCPUs = 4 + 2
	previewMem  = 1<<30 + 512<<20
)

func newPreviewWorld(t *testing.T) *previewWorld {
	w := &previewWorld{vmwareWorld: newVMwareWorld(t, 3, nil), nfs: t.TempDir()}
	ctx := testcluster.Ctx(t, 30*time.Second)
	inv := w.cl.TargetInventory()
	if _, err := inv.CreateCluster(ctx, &ferryv1.CreateClusterRequest{Cluster: &ferryv1.Cluster{Name: "clusters/c1"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := inv.CreatePrimaryStorage(ctx, &ferryv1.CreatePrimaryStorageRequest{PrimaryStorage: &ferryv1.PrimaryStorage{
		Name: "primaryStorages/nfs", Cluster: "clusters/c1", Type: ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_NFS, Path: w.nfs}}); err != nil {
		t.Fatal(err)
	}
	// .10 to .14: five addresses, none the gateway, network or broadcast.
	if _, err := inv.CreateL3Network(ctx, &ferryv1.CreateL3NetworkRequest{L3Network: &ferryv1.L3Network{Name: "l3Networks/n1", Cluster: "clusters/c1",
		Bridge: "br0", IpRangeStart: "10.0.0.10", IpRangeEnd: "10.0.0.14", Gateway: "10.0.0.1", PrefixLength: 24}}); err != nil {
		t.Fatal(err)
	}
	var addrs []string
	for _, n := range w.c.Nodes() {
		addrs = append(addrs, n.Addr())
	}
	for name, f := range map[string]*ferryv1.HostFacts{
		"kvm-a": {Cpus: 4, MemoryBytes: 2 << 30, MemoryAvailableBytes: 1 << 30},
		"kvm-b": {Cpus: 2, MemoryBytes: 1 << 30, MemoryAvailableBytes: 512 << 20},
	} {
		agenttest.Start(t, agenttest.Options{Coordinators: addrs, HostName: name, Cluster: "c1", Credentials: w.c.AgentCredentials(name), Facts: f,
			Logger: testcluster.Logger(t)})
	}
	testcluster.Eventually(t, 15*time.Second, "the first sync is recorded", func() bool {
		s, err := w.cl.Sources().GetSource(ctx, &ferryv1.GetSourceRequest{Name: w.source})
		return err == nil && s.GetLastSyncTime() != nil
	})
	return w
}

func (w *previewWorld) spec(vm string, cpus int32, mem, disk int64, nics int) *ferryv1.MigrationJobSpec {
	t := &ferryv1.TargetVm{VmName: "t-" + vm, Cluster: "clusters/c1", PrimaryStorage: "primaryStorages/nfs", Cpus: cpus, MemoryBytes: mem,
		Disks: []*ferryv1.TargetDisk{{SourceDisk: w.diskKey(vm), SizeBytes: disk}}}
	for i := 0; i < nics; i++ {
		t.Nics = append(t.Nics, &ferryv1.TargetNic{Mac: fmt.Sprintf("52:54:00:%02x:%02x:%02x", len(vm), vm[len(vm)-1], i), L3Network: "l3Networks/n1"})
	}
	return &ferryv1.MigrationJobSpec{SourceVm: vm, Target: t}
}

func (w *previewWorld) preview(ctx context.Context, specs ...*ferryv1.MigrationJobSpec) (*ferryv1.PreviewMigrationJobsResponse, error) {
	return w.cl.Jobs().PreviewMigrationJobs(ctx, &ferryv1.PreviewMigrationJobsRequest{Source: w.source, MigrationServer: w.server, Jobs: specs})
}

// applied is every node's applied Raft index.
func (w *previewWorld) applied() []uint64 {
	var out []uint64
	for _, n := range w.c.Nodes() {
		out = append(out, n.Server.Node().Stats().AppliedIndex)
	}
	return out
}

// unchanged runs call and checks that no node applied anything meanwhile.
// A host refresh of the session manager may land in between; it is told
// apart by trying again, at most three times.
func (w *previewWorld) unchanged(call func()) {
	w.t.Helper()
	for attempt := 0; ; attempt++ {
		// Wait for every node to catch up with the leader first.
		var before []uint64
		testcluster.Eventually(w.t, 10*time.Second, "the nodes apply the same index", func() bool {
			before = w.applied()
			return before[0] == before[1] && before[1] == before[2]
		})
		call()
		time.Sleep(200 * time.Millisecond) // a write would reach the followers in this time
		after := w.applied()
		if fmt.Sprint(after) == fmt.Sprint(before) {
			return
		}
		if attempt == 2 {
			w.t.Fatalf("applied indexes moved from %v to %v during a preview", before, after)
		}
	}
}

func usageOf(t *testing.T, resp *ferryv1.PreviewMigrationJobsResponse, kind ferryv1.PreviewResourceKind, resource string) *ferryv1.PreviewUsage {
	t.Helper()
	for _, u := range resp.GetUsages() {
		if u.GetKind() == kind && u.GetResource() == resource {
			return u
		}
	}
	t.Fatalf("no %s usage of %s in %v", kind, resource, resp.GetUsages())
	return nil
}

// usageOn finds the usage of kind on host.
func usageOn(t *testing.T, resp *ferryv1.PreviewMigrationJobsResponse, kind ferryv1.PreviewResourceKind, host string) *ferryv1.PreviewUsage {
	t.Helper()
	for _, u := range resp.GetUsages() {
		if u.GetKind() == kind && u.GetHost() == host {
			return u
		}
	}
	t.Fatalf("no %s usage on %s in %v", kind, host, resp.GetUsages())
	return nil
}

func checkUsage(t *testing.T, u *ferryv1.PreviewUsage, requested, available int64, fits bool) {
	t.Helper()
	if !u.GetKnown() || u.GetRequested() != requested || u.GetAvailable() != available || u.GetFits() != fits {
		t.Errorf("%s of %s: requested %d available %d known %v fits %v (%s); want requested %d available %d fits %v",
			u.GetKind(), u.GetResource(), u.GetRequested(), u.GetAvailable(), u.GetKnown(), u.GetFits(), u.GetNote(), requested, available, fits)
	}
}

// freeBytes is what statfs says is free where path is.
func freeBytes(t *testing.T, path string) int64 {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize
}

// freeSeen samples the free space of a file system from the start of a
// test to its end, so that a figure an agent measured at some moment in
// between can be checked while other work on the machine writes and
// deletes files on the same file system.
type freeSeen struct {
	mu     sync.Mutex
	lo, hi int64
}

func watchFree(t *testing.T, path string) *freeSeen {
	f := &freeSeen{lo: freeBytes(t, path)}
	f.hi = f.lo
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			var st syscall.Statfs_t
			if syscall.Statfs(path, &st) == nil {
				f.add(int64(st.Bavail) * st.Bsize)
			}
			select {
			case <-ctx.Done():
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return f
}

func (f *freeSeen) add(n int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lo, f.hi = min(f.lo, n), max(f.hi, n)
}

// around says whether n, less off, was free at some moment seen, within
// slack (a few blocks of metadata written meanwhile).
func (f *freeSeen) around(n, off, slack int64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return n >= f.lo-off-slack && n <= f.hi-off+slack
}

func (f *freeSeen) String() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return fmt.Sprintf("%d..%d", f.lo, f.hi)
}

// TestPreviewMigrationJobs previews a batch that fits and one that does
// not over a three-node cluster, a vcsim source and real agents, with one
// job already queued: CPUs and memory against the agents' facts, disk
// bytes against the space the agents measure of the NFS directory,
// addresses against the range; the pre-check and allocation that would
// fail are listed; nothing is written. Create then gives the addresses
// the preview showed.
func TestPreviewMigrationJobs(t *testing.T) {
	seen := watchFree(t, os.TempDir()) // the file system of the NFS directory and the cache path
	w := newPreviewWorld(t)
	ctx := testcluster.Ctx(t, 90*time.Second)
	nfs := "primaryStorages/nfs"
	var measured int64 // what the agents measured, with no job yet
	testcluster.Eventually(t, 15*time.Second, "the agents report the NFS directory's space", func() bool {
		resp, err := w.preview(ctx, w.spec("DC0_H0_VM0", 1, 64<<20, 1<<20, 1))
		u := usageOf(t, resp, ferryv1.PreviewResourceKind_PREVIEW_RESOURCE_KIND_DISK_BYTES, nfs)
		measured = u.GetAvailable()
		return err == nil && u.GetKnown()
	})
	// Free space moves with whatever else writes to the file system, so
	// the agent's figure is compared with what statfs said at some moment
	// since the test began.
	if !seen.around(measured, 0, 64<<20) {
		t.Errorf("the agents report %d bytes free in %s; statfs said %v meanwhile", measured, w.nfs, seen)
	}
	// The server's host measures the server's cache_path, which it learns
	// from the coordinator.
	srv, err := w.cl.MigrationServers().GetMigrationServer(ctx, &ferryv1.GetMigrationServerRequest{Name: w.server})
	if err != nil {
		t.Fatal(err)
	}
	cachePath := srv.GetCachePath()
	var cache *ferryv1.PreviewUsage
	testcluster.Eventually(t, 15*time.Second, "the server's host reports its cache path's space", func() bool {
		resp, err := w.preview(ctx, w.spec("DC0_H0_VM0", 1, 64<<20, 1<<20, 1))
		cache = usageOf(t, resp, ferryv1.PreviewResourceKind_PREVIEW_RESOURCE_KIND_CACHE_BYTES, w.server)
		return err == nil && cache.GetKnown()
	})
	if cache.GetRequested() != 1<<20 || !strings.HasPrefix(cachePath, os.TempDir()) || !seen.around(cache.GetAvailable(), 0, 64<<20) {
		t.Errorf("cache usage %v; statfs said %v bytes free at %s meanwhile", cache, seen, cachePath)
	}
	// One job queued (its server disabled) holds 1 vCPU, 128 MiB, 1 GiB
	// and the address 10.0.0.10.
	if _, err := w.cl.MigrationServers().DisableMigrationServer(ctx, &ferryv1.DisableMigrationServerRequest{Name: w.server}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.cl.Jobs().CreateMigrationJobs(ctx, &ferryv1.CreateMigrationJobsRequest{Source: w.source, MigrationServer: w.server,
		Jobs: []*ferryv1.MigrationJobSpec{w.spec("DC0_H0_VM1", 1, 128<<20, 1<<30, 1)}}); err != nil {
		t.Fatal(err)
	}

	fitting := []*ferryv1.MigrationJobSpec{w.spec("DC0_H0_VM0", 2, 256<<20, 1<<30, 1), w.spec("DC0_C0_RP0_VM0", 2, 256<<20, 1<<30, 1)}
	var resp *ferryv1.PreviewMigrationJobsResponse
	w.unchanged(func() {
		var err error
		if resp, err = w.preview(ctx, fitting...); err != nil {
			t.Fatalf("preview: %v", err)
		}
	})
	free := freeBytes(t, w.nfs)
	if !resp.GetFits() || len(resp.GetFailedChecks()) != 0 {
		t.Errorf("fitting batch: fits %v, failed checks %q", resp.GetFits(), resp.GetFailedChecks())
	}
	if len(resp.GetJobs()) != 2 {
		t.Fatalf("preview jobs = %v", resp.GetJobs())
	}
	for i, want := range []string{"10.0.0.11", "10.0.0.12"} {
		j := resp.GetJobs()[i]
		if j.GetName() != "" || j.GetTarget().GetVmName() != fitting[i].GetTarget().GetVmName() || j.GetTarget().GetNics()[0].GetIp() != want ||
			j.GetTarget().GetCpus() != 2 || j.GetTarget().GetMemoryBytes() != 256<<20 || j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_UNSPECIFIED {
			t.Errorf("preview job %d = %v; want unnamed, %s, ip %s", i, j, fitting[i].GetTarget().GetVmName(), want)
		}
	}
	// Placed by fewest_vms: the queued job went to kvm-a (a tie, by name),
	// so the first VM goes to kvm-b, the second to kvm-a; each host's CPUs
	// and memory count what the queued job placed there takes.
	for i, want := range []string{"hosts/kvm-b", "hosts/kvm-a"} {
		if got := resp.GetJobs()[i].GetTargetHost(); got != want || !strings.HasPrefix(resp.GetJobs()[i].GetPlacementReason(), "allocation strategy fewest_vms: "+want) {
			t.Errorf("preview job %d placed on %s (%q), want %s", i, got, resp.GetJobs()[i].GetPlacementReason(), want)
		}
	}
	checkUsage(t, usageOn(t, resp, ferryv1.PreviewResourceKind_PREVIEW_RESOURCE_KIND_VCPUS, "hosts/kvm-a"), 2, 4-1, true)
	checkUsage(t, usageOn(t, resp, ferryv1.PreviewResourceKind_PREVIEW_RESOURCE_KIND_VCPUS, "hosts/kvm-b"), 2, 2, true)
	checkUsage(t, usageOn(t, resp, ferryv1.PreviewResourceKind_PREVIEW_RESOURCE_KIND_MEMORY_BYTES, "hosts/kvm-a"), 256<<20, 1<<30-128<<20, true)
	checkUsage(t, usageOn(t, resp, ferryv1.PreviewResourceKind_PREVIEW_RESOURCE_KIND_MEMORY_BYTES, "hosts/kvm-b"), 256<<20, 512<<20, true)
	checkUsage(t, usageOf(t, resp, ferryv1.PreviewResourceKind_PREVIEW_RESOURCE_KIND_IP_ADDRESSES, "l3Networks/n1"), 2, 4, true)
	// The queued job's disk comes off what the agents measured. They
	// measure again when the paths they are told to measure change, and
	// the file system's free space moves by a few blocks meanwhile.
	if u := usageOf(t, resp, ferryv1.PreviewResourceKind_PREVIEW_RESOURCE_KIND_DISK_BYTES, nfs); !u.GetKnown() || !u.GetFits() ||
		u.GetRequested() != 2<<30 || !seen.around(u.GetAvailable(), 1<<30, 64<<20) {
		t.Errorf("disk usage %v; want 2 GiB requested of what statfs said (%v) less the queued job's 1 GiB, fitting", u, seen)
	}

	// Too many vCPUs, too much memory and disk, more NICs than addresses,
	// and a VM the inventory does not have.
	big := []*ferryv1.MigrationJobSpec{w.spec("vm-9999", 2, 1<<30, 2*free, 2),
		w.spec("DC0_H0_VM0", 2, 1<<30, 1<<30, 2), w.spec("DC0_C0_RP0_VM0", 2, 1<<30, 1<<30, 2)}
	w.unchanged(func() {
		var err error
		if resp, err = w.preview(ctx, big...); err != nil {
			t.Fatalf("preview: %v", err)
		}
	})
	if resp.GetFits() {
		t.Error("a batch that does not fit says it fits")
	}
	// b, a, b: two VMs of 2 vCPUs and 1 GiB on kvm-b (2 CPUs, 512 MiB
	// available) do not fit; one on kvm-a fits its CPUs, not its memory.
	checkUsage(t, usageOn(t, resp, ferryv1.PreviewResourceKind_PREVIEW_RESOURCE_KIND_VCPUS, "hosts/kvm-b"), 4, 2, false)
	checkUsage(t, usageOn(t, resp, ferryv1.PreviewResourceKind_PREVIEW_RESOURCE_KIND_MEMORY_BYTES, "hosts/kvm-b"), 2<<30, 512<<20, false)
	checkUsage(t, usageOn(t, resp, ferryv1.PreviewResourceKind_PREVIEW_RESOURCE_KIND_VCPUS, "hosts/kvm-a"), 2, 3, true)
	checkUsage(t, usageOn(t, resp, ferryv1.PreviewResourceKind_PREVIEW_RESOURCE_KIND_MEMORY_BYTES, "hosts/kvm-a"), 1<<30, 1<<30-128<<20, false)
	checkUsage(t, usageOf(t, resp, ferryv1.PreviewResourceKind_PREVIEW_RESOURCE_KIND_IP_ADDRESSES, "l3Networks/n1"), 6, 4, false)
	if disk := usageOf(t, resp, ferryv1.PreviewResourceKind_PREVIEW_RESOURCE_KIND_DISK_BYTES, nfs); disk.GetFits() || disk.GetRequested() != 2*free+2<<30 {
		t.Errorf("disk usage %v; want requested %d, not fitting", disk, 2*free+2<<30)
	}
	wantLines := []string{`jobs[0]: VM "vm-9999" is not in the inventory of sources/vc`,
		"jobs[2].target.nics[0].l3_network: no free address left in l3Networks/n1 (range 10.0.0.10-10.0.0.14)"}
	if len(resp.GetFailedChecks()) != len(wantLines) {
		t.Fatalf("failed checks %q; want %d", resp.GetFailedChecks(), len(wantLines))
	}
	for i, want := range wantLines {
		if !strings.HasPrefix(resp.GetFailedChecks()[i], want) {
			t.Errorf("failed check %d = %q; want it to start with %q", i, resp.GetFailedChecks()[i], want)
		}
	}

	// A spec without sizes is filled from the source VM, as create fills it.
	vm := w.sim.VM(ctx, t, "DC0_H0_VM0")
	var mo mo.VirtualMachine
	if err := vm.Properties(ctx, vm.Reference(), []string{"config.hardware"}, &mo); err != nil {
		t.Fatal(err)
	}
	resp, err = w.preview(ctx, w.spec("DC0_H0_VM0", 0, 0, 1<<30, 1))
	if err != nil {
		t.Fatal(err)
	}
	hw := mo.Config.Hardware
	if got := resp.GetJobs()[0].GetTarget(); got.GetCpus() != hw.NumCPU || got.GetMemoryBytes() != int64(hw.MemoryMB)<<20 {
		t.Errorf("filled target has %d vCPUs, %d bytes; the source VM %d vCPUs, %d MiB", got.GetCpus(), got.GetMemoryBytes(), hw.NumCPU, hw.MemoryMB)
	}
	if u := usageOn(t, resp, ferryv1.PreviewResourceKind_PREVIEW_RESOURCE_KIND_VCPUS, resp.GetJobs()[0].GetTargetHost()); u.GetRequested() != int64(hw.NumCPU) {
		t.Errorf("vCPUs requested by the filled spec: %d, want %d", u.GetRequested(), hw.NumCPU)
	}

	// A VM larger than any host of the cluster: a failed check naming
	// every host and why, and it does not fit.
	resp, err = w.preview(ctx, w.spec("DC0_H0_VM0", 8, 64<<20, 1<<30, 1))
	if err != nil {
		t.Fatal(err)
	}
	want := "jobs[0].target.host: no host of cluster clusters/c1 can take the VM: hosts/kvm-a (4 CPUs, the VM has 8 vCPUs); hosts/kvm-b (2 CPUs, the VM has 8 vCPUs)"
	if resp.GetFits() || len(resp.GetFailedChecks()) != 1 || resp.GetFailedChecks()[0] != want {
		t.Errorf("a VM larger than any host: fits %v, failed checks %q; want %q", resp.GetFits(), resp.GetFailedChecks(), want)
	}

	// Malformed requests are refused as create refuses them.
	bad := w.spec("DC0_H0_VM0", 1, 64<<20, 1<<30, 1)
	bad.Target.Nics[0].Mac = "not-a-mac"
	if _, err := w.preview(ctx, bad); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "jobs[0].target.nics[0].mac") {
		t.Errorf("preview with a bad MAC: %v; want INVALID_ARGUMENT naming jobs[0].target.nics[0].mac", err)
	}
	jobs, err := w.cl.Jobs().ListMigrationJobs(ctx, &ferryv1.ListMigrationJobsRequest{})
	if err != nil || len(jobs.GetJobs()) != 1 {
		t.Fatalf("jobs after previews: %v, %v; want the one queued", jobs.GetJobs(), err)
	}

	// Create takes what the preview showed.
	created, err := w.cl.Jobs().CreateMigrationJobs(ctx, &ferryv1.CreateMigrationJobsRequest{Source: w.source, MigrationServer: w.server, Jobs: fitting})
	if err != nil {
		t.Fatal(err)
	}
	for i, j := range created.GetJobs() {
		if got := j.GetTarget().GetNics()[0].GetIp(); got != fmt.Sprintf("10.0.0.1%d", i+1) {
			t.Errorf("created job %d has ip %s; the preview showed 10.0.0.1%d", i, got, i+1)
		}
	}
}
