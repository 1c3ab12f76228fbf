package placement

import (
	"errors"
	"strings"
	"testing"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

const (
	gib = int64(1) << 30
	c1  = "clusters/c1"
)

var (
	local = &ferryv1.PrimaryStorage{Name: "primaryStorages/local", Cluster: c1, Type: ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_LOCAL, Path: "/var/lib/ferry"}
	nfs   = &ferryv1.PrimaryStorage{Name: "primaryStorages/nfs", Cluster: c1, Type: ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_NFS, Path: "/mnt/nfs"}
)

type hostOpt func(*ferryv1.Host)

func host(name string, opts ...hostOpt) *ferryv1.Host {
	h := &ferryv1.Host{Name: "hosts/" + name, Cluster: c1, Connected: true, Facts: &ferryv1.HostFacts{
		Cpus: 8, MemoryBytes: 16 * gib, MemoryAvailableBytes: 12 * gib,
		Storages: []*ferryv1.StorageSpace{{Path: "/var/lib/ferry", TotalBytes: 100 * gib, FreeBytes: 50 * gib}}}}
	for _, o := range opts {
		o(h)
	}
	return h
}

func vms(n int32) hostOpt           { return func(h *ferryv1.Host) { h.Facts.RunningVms = n } }
func vcpus(n int32) hostOpt         { return func(h *ferryv1.Host) { h.Facts.RunningVcpus = n } }
func cpus(n int32) hostOpt          { return func(h *ferryv1.Host) { h.Facts.Cpus = n } }
func avail(n int64) hostOpt         { return func(h *ferryv1.Host) { h.Facts.MemoryAvailableBytes = n } }
func mem(n int64) hostOpt           { return func(h *ferryv1.Host) { h.Facts.MemoryBytes = n } }
func free(n int64) hostOpt          { return func(h *ferryv1.Host) { h.Facts.Storages[0].FreeBytes = n } }
func inCluster(c string) hostOpt    { return func(h *ferryv1.Host) { h.Cluster = c } }
func disconnected(h *ferryv1.Host)  { h.Connected = false }
func maintenance(h *ferryv1.Host)   { h.Maintenance = true }
func noStorageFact(h *ferryv1.Host) { h.Facts.Storages = nil }

func vm(opts ...func(*ferryv1.TargetVm)) *ferryv1.TargetVm {
	v := &ferryv1.TargetVm{VmName: "web", Cluster: c1, PrimaryStorage: local.GetName(), Cpus: 2, MemoryBytes: 2 * gib,
		Disks: []*ferryv1.TargetDisk{{SourceDisk: "vda", SizeBytes: 10 * gib}, {SourceDisk: "vdb", SizeBytes: 5 * gib}}}
	for _, o := range opts {
		o(v)
	}
	return v
}

func named(h string) func(*ferryv1.TargetVm) { return func(v *ferryv1.TargetVm) { v.Host = h } }
func sized(c int32, m int64) func(*ferryv1.TargetVm) {
	return func(v *ferryv1.TargetVm) { v.Cpus, v.MemoryBytes = c, m }
}

const (
	fewest     = ferryv1.HostAllocationStrategy_HOST_ALLOCATION_STRATEGY_FEWEST_RUNNING_VMS
	unset      = ferryv1.HostAllocationStrategy_HOST_ALLOCATION_STRATEGY_UNSPECIFIED
	mostFree   = ferryv1.HostAllocationStrategy_HOST_ALLOCATION_STRATEGY_MOST_FREE_MEMORY
	leastMem   = ferryv1.HostAllocationStrategy_HOST_ALLOCATION_STRATEGY_LEAST_MEMORY_USED
	leastCPU   = ferryv1.HostAllocationStrategy_HOST_ALLOCATION_STRATEGY_LEAST_CPU_USED
	onServer   = ferryv1.HostAllocationStrategy_HOST_ALLOCATION_STRATEGY_MIGRATION_SERVER
	serverHost = "hosts/ms"
)

func TestPlace(t *testing.T) {
	tests := []struct {
		name     string
		hosts    []*ferryv1.Host
		strategy ferryv1.HostAllocationStrategy
		storage  *ferryv1.PrimaryStorage
		planned  []Planned
		vm       *ferryv1.TargetVm
		want     string
		reason   string // a prefix of the reason
	}{
		{"fewest VMs, the default", []*ferryv1.Host{host("a", vms(3)), host("b", vms(1)), host("c", vms(2))}, unset, local, nil, vm(),
			"hosts/b", "allocation strategy fewest_vms: hosts/b (1 VMs: 1 running, 0 of queued and running jobs); then hosts/c (2 VMs: 2 running, 0 of queued and running jobs), hosts/a (3 VMs"},
		{"fewest VMs counts queued and running jobs", []*ferryv1.Host{host("a", vms(1)), host("b")}, fewest, local,
			[]Planned{{Host: "hosts/b"}, {Host: "hosts/b"}}, vm(), "hosts/a", "allocation strategy fewest_vms: hosts/a (1 VMs: 1 running, 0 of"},
		{"a planned entry of many VMs counts them all", []*ferryv1.Host{host("a", vms(2)), host("b")}, fewest, local,
			[]Planned{{Host: "hosts/b", VMs: 3}}, vm(), "hosts/a", "allocation strategy fewest_vms: hosts/a (2 VMs: 2 running, 0 of queued and running jobs); then hosts/b (3 VMs: 0 running, 3 of"},
		{"a tie goes to the first by name", []*ferryv1.Host{host("b"), host("a"), host("c")}, fewest, local, nil, vm(), "hosts/a", ""},
		{"never a host in maintenance", []*ferryv1.Host{host("a", maintenance), host("b", vms(5))}, fewest, local, nil, vm(),
			"hosts/b", "allocation strategy fewest_vms: hosts/b (5 VMs: 5 running, 0 of queued and running jobs); not hosts/a (in maintenance)"},
		{"never a disconnected host", []*ferryv1.Host{host("a", disconnected), host("b", vms(5))}, fewest, local, nil, vm(),
			"hosts/b", "allocation strategy fewest_vms: hosts/b (5 VMs: 5 running, 0 of queued and running jobs); not hosts/a (disconnected)"},
		{"never a host of another cluster", []*ferryv1.Host{host("a", inCluster("clusters/c2")), host("b", vms(5))}, fewest, local, nil, vm(), "hosts/b", ""},
		{"never a host too small", []*ferryv1.Host{host("a", cpus(1)), host("b", mem(gib)), host("c", vms(9))}, fewest, local, nil, vm(),
			"hosts/c", "allocation strategy fewest_vms: hosts/c (9 VMs: 9 running, 0 of queued and running jobs); not hosts/a (1 CPUs, the VM has 2 vCPUs), hosts/b (1.0 GiB of memory, the VM needs 2.0 GiB)"},
		{"local storage: free space after planned disks", []*ferryv1.Host{host("a", free(20*gib)), host("b", vms(4))}, fewest, local,
			[]Planned{{Host: "hosts/a", Storage: local.GetName(), DiskBytes: 10 * gib}}, vm(),
			"hosts/b", "allocation strategy fewest_vms: hosts/b (4 VMs: 4 running, 0 of queued and running jobs); not hosts/a (10.0 GiB free at /var/lib/ferry after 10.0 GiB for queued and running jobs, the VM's disks need 15.0 GiB)"},
		{"local storage: planned disks of other storage do not count", []*ferryv1.Host{host("a", free(20*gib)), host("b", vms(4))}, fewest, local,
			[]Planned{{Host: "hosts/c", Storage: local.GetName(), DiskBytes: 10 * gib}, {Host: "hosts/a", Storage: nfs.GetName(), DiskBytes: 10 * gib}}, vm(), "hosts/a", ""},
		{"local storage: an unmeasured path is not held against a host", []*ferryv1.Host{host("a", noStorageFact), host("b", vms(4))}, fewest, local, nil, vm(), "hosts/a", ""},
		{"shared storage: local free space does not matter", []*ferryv1.Host{host("a", free(0)), host("b", vms(4))}, fewest, nfs, nil, vm(), "hosts/a", ""},
		{"most free memory", []*ferryv1.Host{host("a", avail(8*gib)), host("b", avail(10*gib))}, mostFree, local,
			[]Planned{{Host: "hosts/b", MemoryBytes: 4 * gib}}, vm(), "hosts/a", "allocation strategy most_free_memory: hosts/a (8.0 GiB free after 0 B for queued and running jobs); then hosts/b (6.0 GiB free after 4.0 GiB"},
		{"least memory used, as a share", []*ferryv1.Host{host("a", mem(64*gib), avail(48*gib)), host("b", mem(16*gib), avail(14*gib))}, leastMem, local,
			[]Planned{{Host: "hosts/b", MemoryBytes: 2 * gib}}, vm(), "hosts/a", "allocation strategy least_memory_used: hosts/a (16.0 GiB of 64.0 GiB used with queued and running jobs, 25%); then hosts/b (4.0 GiB of 16.0 GiB used with queued and running jobs, 25%)"},
		{"least CPU used, as a share", []*ferryv1.Host{host("a", cpus(4), vcpus(2)), host("b", cpus(16), vcpus(4))}, leastCPU, local,
			[]Planned{{Host: "hosts/b", CPUs: 2}}, vm(), "hosts/b", "allocation strategy least_cpu_used: hosts/b (6 vCPUs on 16 CPUs with queued and running jobs, 38%); then hosts/a (2 vCPUs on 4 CPUs"},
		{"migration server", []*ferryv1.Host{host("a"), host("ms", vms(9))}, onServer, local, nil, vm(), serverHost, "allocation strategy migration_server: the migration server's host"},
		{"target.host wins over the strategy", []*ferryv1.Host{host("a"), host("b", vms(9))}, fewest, local, nil, vm(named("hosts/b")), "hosts/b", "named by target.host"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := Input{Cluster: c1, Hosts: tt.hosts, Strategy: tt.strategy, MigrationServerHost: serverHost, Storage: tt.storage, Planned: tt.planned}
			got, err := Place(in, tt.vm)
			if err != nil {
				t.Fatalf("Place: %v", err)
			}
			if got.Host != tt.want || !strings.HasPrefix(got.Reason, tt.reason) {
				t.Fatalf("Place = %s, %q\nwant %s, reason starting %q", got.Host, got.Reason, tt.want, tt.reason)
			}
			again, _ := Place(in, tt.vm)
			if again != got {
				t.Fatalf("a second Place answered %v, the first %v", again, got)
			}
		})
	}
}

func TestPlaceRefusals(t *testing.T) {
	tests := []struct {
		name     string
		hosts    []*ferryv1.Host
		strategy ferryv1.HostAllocationStrategy
		vm       *ferryv1.TargetVm
		kind     Kind
		msg      string
	}{
		{"named host missing", []*ferryv1.Host{host("a")}, fewest, vm(named("hosts/zz")), NotFound, "host: host hosts/zz not found"},
		{"named host of another cluster", []*ferryv1.Host{host("a"), host("x", inCluster("clusters/c2"))}, fewest, vm(named("hosts/x")), Invalid,
			"host: host hosts/x is not a host of cluster clusters/c1 (it is in clusters/c2); name a host of clusters/c1 or leave host empty"},
		{"named host of no cluster", []*ferryv1.Host{host("x", inCluster(""))}, fewest, vm(named("hosts/x")), Invalid,
			"host: host hosts/x is not a host of cluster clusters/c1 (it is in no cluster)"},
		{"named host in maintenance", []*ferryv1.Host{host("a", maintenance)}, fewest, vm(named("hosts/a")), Precondition, "host: host hosts/a cannot take the VM: in maintenance"},
		{"named host disconnected", []*ferryv1.Host{host("a", disconnected)}, fewest, vm(named("hosts/a")), Precondition, "host: host hosts/a cannot take the VM: disconnected"},
		{"named host too small", []*ferryv1.Host{host("a")}, fewest, vm(named("hosts/a"), sized(16, gib)), Precondition, "host: host hosts/a cannot take the VM: 8 CPUs, the VM has 16 vCPUs"},
		{"larger than any host", []*ferryv1.Host{host("a"), host("b", mem(20*gib))}, fewest, vm(sized(2, 24*gib)), Precondition,
			"host: no host of cluster clusters/c1 can take the VM: hosts/a (16.0 GiB of memory, the VM needs 24.0 GiB); hosts/b (20.0 GiB of memory, the VM needs 24.0 GiB)"},
		{"every host in maintenance", []*ferryv1.Host{host("a", maintenance), host("b", maintenance)}, fewest, vm(), Precondition,
			"host: no host of cluster clusters/c1 can take the VM: hosts/a (in maintenance); hosts/b (in maintenance)"},
		{"no hosts", []*ferryv1.Host{host("x", inCluster("clusters/c2"))}, fewest, vm(), Precondition, "host: cluster clusters/c1 has no hosts"},
		{"migration server outside the cluster", []*ferryv1.Host{host("a"), host("ms", inCluster("clusters/c2"))}, onServer, vm(), Precondition,
			"host: allocation strategy migration_server: the migration server's host hosts/ms is not a host of cluster clusters/c1; name target.host or change the strategy"},
		{"migration server in maintenance", []*ferryv1.Host{host("ms", maintenance)}, onServer, vm(), Precondition,
			"host: allocation strategy migration_server: host hosts/ms cannot take the VM: in maintenance"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := Input{Cluster: c1, Hosts: tt.hosts, Strategy: tt.strategy, MigrationServerHost: serverHost, Storage: local}
			_, err := Place(in, tt.vm)
			var pe *Error
			if !errors.As(err, &pe) || pe.Kind != tt.kind || !strings.HasPrefix(err.Error(), tt.msg) {
				t.Fatalf("err = %v (%#v)\nwant kind %d, starting %q", err, pe, tt.kind, tt.msg)
			}
		})
	}
}

// TestPlaceBatchSpreads: four VMs on three empty hosts, one of them the
// migration server, spread as four jobs one after the other would.
func TestPlaceBatchSpreads(t *testing.T) {
	in := Input{Cluster: c1, Hosts: []*ferryv1.Host{host("ms"), host("b"), host("c", vms(1))}, Strategy: fewest, MigrationServerHost: serverHost, Storage: local}
	choices, errs := PlaceBatch(in, []*ferryv1.TargetVm{vm(), vm(), vm(named("hosts/c")), vm(), vm(sized(64, gib))})
	var got []string
	for _, c := range choices {
		got = append(got, c.Host)
	}
	want := []string{"hosts/b", "hosts/ms", "hosts/c", "hosts/b", ""}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("hosts = %v, want %v", got, want)
	}
	for i, err := range errs[:4] {
		if err != nil {
			t.Errorf("vm %d: %v", i, err)
		}
	}
	if errs[4] == nil || !strings.Contains(errs[4].Error(), "8 CPUs, the VM has 64 vCPUs") {
		t.Errorf("vm 4: %v", errs[4])
	}
	if len(in.Planned) != 0 {
		t.Errorf("PlaceBatch changed its input's Planned: %v", in.Planned)
	}
	// The third VM (on hosts/c) saw two planned VMs, one on each of b and ms.
	if !strings.Contains(choices[3].Reason, "hosts/b (1 VMs: 0 running, 1 of queued and running jobs); then hosts/ms (1 VMs: 0 running, 1 of queued and running jobs), hosts/c (2 VMs: 1 running, 1 of") {
		t.Errorf("reason of the fourth VM: %q", choices[3].Reason)
	}
}

func TestPlannedOf(t *testing.T) {
	job := func(name string, st ferryv1.MigrationJobState, targetHost string) *ferryv1.MigrationJob {
		return &ferryv1.MigrationJob{Name: name, State: st, TargetHost: targetHost, MigrationServer: "migrationServers/m",
			Target: &ferryv1.TargetVm{PrimaryStorage: local.GetName(), Cpus: 3, MemoryBytes: gib, Disks: []*ferryv1.TargetDisk{{SizeBytes: 7}, {SizeBytes: 8}}}}
	}
	got := PlannedOf([]*ferryv1.MigrationJob{
		job("q", ferryv1.MigrationJobState_MIGRATION_JOB_STATE_QUEUED, "hosts/a"),
		job("r", ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING, ""),
		job("s", ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED, "hosts/a"),
		job("f", ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED, "hosts/a"),
	}, map[string]string{"migrationServers/m": "hosts/ms"})
	want := []Planned{{Host: "hosts/a", CPUs: 3, MemoryBytes: gib, Storage: local.GetName(), DiskBytes: 15}, {Host: "hosts/ms", CPUs: 3, MemoryBytes: gib, Storage: local.GetName(), DiskBytes: 15}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("PlannedOf = %v, want %v", got, want)
	}
}
