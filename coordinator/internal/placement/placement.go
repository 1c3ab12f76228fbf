// Package placement picks the host of a target cluster a migrated VM lands
// on: the host its job names (TargetVm.host), else the one the allocation
// strategy (Settings.host_allocation_strategy) ranks first among the
// connected hosts of the cluster that are not in maintenance and can hold
// the VM. It is pure and deterministic: it reads only its Input, which the
// leader takes from one ledger snapshot, and the leader stamps the answer
// into the job before proposing it, so every replica, a restart and a new
// leader keep the same host.
package placement

import (
	"fmt"
	"slices"
	"strings"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// Kind says which gRPC code the API gives a refusal.
type Kind int

const (
	// Invalid: the request names something that cannot be (INVALID_ARGUMENT).
	Invalid Kind = iota + 1
	// NotFound: the request names a host there is none of (NOT_FOUND).
	NotFound
	// Precondition: the cluster as it is cannot take the VM now
	// (FAILED_PRECONDITION): every host is gone, busy or too small.
	Precondition
)

// Error is a refusal; Field is relative to the TargetVm ("host").
type Error struct {
	Kind  Kind
	Field string
	Msg   string
}

func (e *Error) Error() string { return e.Field + ": " + e.Msg }

// Planned is a VM a queued or running job will add to a host, or the sum
// of VMs many such jobs will add to one host and storage.
type Planned struct {
	Host string
	// VMs is how many VMs the entry adds up; 0 is one.
	VMs         int
	CPUs        int32
	MemoryBytes int64
	// Storage is the job's primary storage; DiskBytes its disks' sizes.
	Storage   string
	DiskBytes int64
}

// Input is what placement reads.
type Input struct {
	// Cluster is the target cluster (clusters/{id}).
	Cluster string
	// Hosts are the ledger's hosts, of every cluster (a host of another
	// cluster is refused by name).
	Hosts    []*ferryv1.Host
	Strategy ferryv1.HostAllocationStrategy
	// MigrationServerHost is the host of the job's migration server.
	MigrationServerHost string
	// Storage is the job's primary storage; for local storage the chosen
	// host's own free space (HostFacts.storages at Storage.path) must hold
	// the disks.
	Storage *ferryv1.PrimaryStorage
	// Planned are the VMs of the queued and running jobs (PlannedOf).
	Planned []Planned
}

// Choice is the host placement picked and why.
type Choice struct {
	Host   string
	Reason string
}

// StrategyName is the strategy as the operator names it.
func StrategyName(s ferryv1.HostAllocationStrategy) string {
	switch s {
	case ferryv1.HostAllocationStrategy_HOST_ALLOCATION_STRATEGY_MOST_FREE_MEMORY:
		return "most_free_memory"
	case ferryv1.HostAllocationStrategy_HOST_ALLOCATION_STRATEGY_LEAST_MEMORY_USED:
		return "least_memory_used"
	case ferryv1.HostAllocationStrategy_HOST_ALLOCATION_STRATEGY_LEAST_CPU_USED:
		return "least_cpu_used"
	case ferryv1.HostAllocationStrategy_HOST_ALLOCATION_STRATEGY_MIGRATION_SERVER:
		return "migration_server"
	default:
		return "fewest_vms"
	}
}

// Place picks the host of one VM.
func Place(in Input, vm *ferryv1.TargetVm) (Choice, error) {
	load := newLoads(in)
	if name := vm.GetHost(); name != "" {
		return placeNamed(in, load, vm, name)
	}
	if in.Strategy == ferryv1.HostAllocationStrategy_HOST_ALLOCATION_STRATEGY_MIGRATION_SERVER {
		return placeOnServer(in, load, vm)
	}
	return placeByStrategy(in, load, vm)
}

// PlaceBatch places the VMs of one request in order, each counting the
// ones placed before it, so a batch spreads as one job at a time would.
// A VM that cannot be placed has its error at its index and adds nothing.
func PlaceBatch(in Input, vms []*ferryv1.TargetVm) ([]Choice, []error) {
	choices := make([]Choice, len(vms))
	errs := make([]error, len(vms))
	in.Planned = slices.Clone(in.Planned)
	for i, vm := range vms {
		c, err := Place(in, vm)
		if err != nil {
			errs[i] = err
			continue
		}
		choices[i] = c
		in.Planned = append(in.Planned, PlannedVM(c.Host, in.Storage.GetName(), vm))
	}
	return choices, errs
}

// PlannedVM is what a VM placed on host adds to it.
func PlannedVM(host, storage string, vm *ferryv1.TargetVm) Planned {
	return Planned{Host: host, CPUs: vm.GetCpus(), MemoryBytes: vm.GetMemoryBytes(), Storage: storage, DiskBytes: diskBytes(vm)}
}

// PlannedOf is what the queued and running jobs will add: each on its
// target_host, or, for a job placed before placement existed, on its
// migration server's host (serverHost maps migrationServers/… to hosts/…).
func PlannedOf(jobs []*ferryv1.MigrationJob, serverHost map[string]string) []Planned {
	var out []Planned
	for _, j := range jobs {
		switch j.GetState() {
		case ferryv1.MigrationJobState_MIGRATION_JOB_STATE_QUEUED, ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING:
		default:
			continue
		}
		host := j.GetTargetHost()
		if host == "" {
			host = serverHost[j.GetMigrationServer()]
		}
		if host == "" {
			continue
		}
		out = append(out, PlannedVM(host, j.GetTarget().GetPrimaryStorage(), j.GetTarget()))
	}
	return out
}

func diskBytes(vm *ferryv1.TargetVm) int64 {
	var n int64
	for _, d := range vm.GetDisks() {
		n += d.GetSizeBytes()
	}
	return n
}

func placeNamed(in Input, load loads, vm *ferryv1.TargetVm, name string) (Choice, error) {
	h := findHost(in.Hosts, name)
	if h == nil {
		return Choice{}, &Error{NotFound, "host", fmt.Sprintf("host %s not found", name)}
	}
	if h.GetCluster() != in.Cluster {
		return Choice{}, &Error{Invalid, "host", fmt.Sprintf("host %s is not a host of cluster %s (it is in %s); name a host of %s or leave host empty",
			name, in.Cluster, clusterOrNone(h.GetCluster()), in.Cluster)}
	}
	if why := unfit(in, load, h, vm); why != "" {
		return Choice{}, &Error{Precondition, "host", fmt.Sprintf("host %s cannot take the VM: %s", name, why)}
	}
	return Choice{Host: name, Reason: "named by target.host"}, nil
}

func placeOnServer(in Input, load loads, vm *ferryv1.TargetVm) (Choice, error) {
	name := in.MigrationServerHost
	h := findHost(in.Hosts, name)
	if h == nil || h.GetCluster() != in.Cluster {
		return Choice{}, &Error{Precondition, "host", fmt.Sprintf(
			"allocation strategy migration_server: the migration server's host %s is not a host of cluster %s; name target.host or change the strategy",
			name, in.Cluster)}
	}
	if why := unfit(in, load, h, vm); why != "" {
		return Choice{}, &Error{Precondition, "host", fmt.Sprintf("allocation strategy migration_server: host %s cannot take the VM: %s", name, why)}
	}
	return Choice{Host: name, Reason: "allocation strategy migration_server: the migration server's host"}, nil
}

func placeByStrategy(in Input, load loads, vm *ferryv1.TargetVm) (Choice, error) {
	strategy := StrategyName(in.Strategy)
	type candidate struct {
		host  *ferryv1.Host
		score float64
		shown string
	}
	var fit []candidate
	var skipped []string
	for _, h := range in.Hosts {
		if h.GetCluster() != in.Cluster {
			continue
		}
		if why := unfit(in, load, h, vm); why != "" {
			skipped = append(skipped, h.GetName()+" ("+why+")")
			continue
		}
		score, shown := scoreOf(in.Strategy, h, load[h.GetName()])
		fit = append(fit, candidate{h, score, shown})
	}
	if len(fit) == 0 {
		if len(skipped) == 0 {
			return Choice{}, &Error{Precondition, "host", fmt.Sprintf("cluster %s has no hosts; start ferry-agent --cluster on its hosts first", in.Cluster)}
		}
		return Choice{}, &Error{Precondition, "host", fmt.Sprintf("no host of cluster %s can take the VM: %s", in.Cluster, strings.Join(skipped, "; "))}
	}
	slices.SortStableFunc(fit, func(a, b candidate) int {
		if a.score != b.score {
			if a.score < b.score {
				return -1
			}
			return 1
		}
		return strings.Compare(a.host.GetName(), b.host.GetName())
	})
	var others []string
	for _, c := range fit[1:] {
		others = append(others, c.host.GetName()+" "+c.shown)
	}
	reason := fmt.Sprintf("allocation strategy %s: %s %s", strategy, fit[0].host.GetName(), fit[0].shown)
	if len(others) > 0 {
		reason += "; then " + listed(others)
	}
	if len(skipped) > 0 {
		reason += "; not " + listed(skipped)
	}
	return Choice{Host: fit[0].host.GetName(), Reason: reason}, nil
}

// listed joins at most five items, then says how many more there were.
func listed(items []string) string {
	const most = 5
	if len(items) <= most {
		return strings.Join(items, ", ")
	}
	return strings.Join(items[:most], ", ") + fmt.Sprintf(" and %d more", len(items)-most)
}

func findHost(hosts []*ferryv1.Host, name string) *ferryv1.Host {
	for _, h := range hosts {
		if h.GetName() == name {
			return h
		}
	}
	return nil
}

func clusterOrNone(c string) string {
	if c == "" {
		return "no cluster"
	}
	return c
}
