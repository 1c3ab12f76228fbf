package placement

import (
	"fmt"
	"math"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// load is what the queued and running jobs placed on one host will add.
type load struct {
	vms         int
	cpus        int64
	memoryBytes int64
	// diskBytes by primary storage.
	diskBytes map[string]int64
}

type loads map[string]*load

func newLoads(in Input) loads {
	m := loads{}
	for _, p := range in.Planned {
		l := m[p.Host]
		if l == nil {
			l = &load{diskBytes: map[string]int64{}}
			m[p.Host] = l
		}
		l.vms += max(p.VMs, 1)
		l.cpus += int64(p.CPUs)
		l.memoryBytes += p.MemoryBytes
		l.diskBytes[p.Storage] += p.DiskBytes
	}
	return m
}

// unfit says why h cannot take vm, or "" when it can: it must be
// connected, not in maintenance, have as many CPUs as the VM has vCPUs and
// as much memory as the VM, and, on local storage, free space at the
// storage's path for the VM's disks after the disks of the jobs placed
// there. A fact the agent did not report (0, or no storage entry) is not
// held against the host.
func unfit(in Input, l loads, h *ferryv1.Host, vm *ferryv1.TargetVm) string {
	f := h.GetFacts()
	switch {
	case !h.GetConnected():
		return "disconnected"
	case h.GetMaintenance():
		return "in maintenance"
	case f.GetCpus() > 0 && vm.GetCpus() > f.GetCpus():
		return fmt.Sprintf("%d CPUs, the VM has %d vCPUs", f.GetCpus(), vm.GetCpus())
	case f.GetMemoryBytes() > 0 && vm.GetMemoryBytes() > f.GetMemoryBytes():
		return fmt.Sprintf("%s of memory, the VM needs %s", bytesText(f.GetMemoryBytes()), bytesText(vm.GetMemoryBytes()))
	}
	if in.Storage.GetType() != ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_LOCAL {
		return ""
	}
	for _, s := range f.GetStorages() {
		if s.GetPath() != in.Storage.GetPath() {
			continue
		}
		var placed int64
		if hl := l[h.GetName()]; hl != nil {
			placed = hl.diskBytes[in.Storage.GetName()]
		}
		if need, free := diskBytes(vm), s.GetFreeBytes()-placed; need > free {
			return fmt.Sprintf("%s free at %s after %s for queued and running jobs, the VM's disks need %s",
				bytesText(max(free, 0)), s.GetPath(), bytesText(placed), bytesText(need))
		}
	}
	return ""
}

// scoreOf ranks a fit host under a strategy (lower first) and says why.
func scoreOf(s ferryv1.HostAllocationStrategy, h *ferryv1.Host, l *load) (float64, string) {
	if l == nil {
		l = &load{}
	}
	f := h.GetFacts()
	switch s {
	case ferryv1.HostAllocationStrategy_HOST_ALLOCATION_STRATEGY_MOST_FREE_MEMORY:
		free := f.GetMemoryAvailableBytes() - l.memoryBytes
		return -float64(free), fmt.Sprintf("(%s free after %s for queued and running jobs)", bytesText(free), bytesText(l.memoryBytes))
	case ferryv1.HostAllocationStrategy_HOST_ALLOCATION_STRATEGY_LEAST_MEMORY_USED:
		used := f.GetMemoryBytes() - f.GetMemoryAvailableBytes()
		if f.GetMemoryAvailableBytes() == 0 {
			used = 0
		}
		used += l.memoryBytes
		share := ratio(used, f.GetMemoryBytes())
		return share, fmt.Sprintf("(%s of %s used with queued and running jobs, %.0f%%)", bytesText(used), bytesText(f.GetMemoryBytes()), 100*share)
	case ferryv1.HostAllocationStrategy_HOST_ALLOCATION_STRATEGY_LEAST_CPU_USED:
		used := int64(f.GetRunningVcpus()) + l.cpus
		share := ratio(used, int64(f.GetCpus()))
		return share, fmt.Sprintf("(%d vCPUs on %d CPUs with queued and running jobs, %.0f%%)", used, f.GetCpus(), 100*share)
	default:
		n := int(f.GetRunningVms()) + l.vms
		return float64(n), fmt.Sprintf("(%d VMs: %d running, %d of queued and running jobs)", n, f.GetRunningVms(), l.vms)
	}
}

// ratio is used/total; a host whose total is unknown ranks last.
func ratio(used, total int64) float64 {
	if total <= 0 {
		return math.Inf(1)
	}
	return float64(used) / float64(total)
}

// bytesText prints a size in binary units, one decimal.
func bytesText(n int64) string {
	const unit = 1024
	if n < unit && n > -unit {
		return fmt.Sprintf("%d B", n)
	}
	v, i := float64(n), -1
	for ; (v >= unit || v <= -unit) && i < 4; i++ {
		v /= unit
	}
	return fmt.Sprintf("%.1f %ciB", v, "KMGTP"[i])
}
