package admission

import (
	"fmt"

	"github.com/ferry-v2v/ferry/coordinator/internal/placement"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// placedHosts are the target hosts of the batch's placed jobs, in the
// order the batch first names them.
func placedHosts(jobs []*ferryv1.MigrationJob) []string {
	var out []string
	for _, j := range jobs {
		out = appendNew(out, j.GetTargetHost())
	}
	return out
}

// hostCompute is what the batch's VMs placed on host take of its CPUs and
// available memory: the VMs started against the host's CPUs less the
// vCPUs of its running VMs, and its MemAvailable, each less what the
// queued and running jobs placed there will take.
func (c *resources) hostCompute(host string, jobs []*ferryv1.MigrationJob, planned []placement.Planned) []*ferryv1.PreviewUsage {
	var cluster string
	cpus := &ferryv1.PreviewUsage{Kind: ferryv1.PreviewResourceKind_PREVIEW_RESOURCE_KIND_VCPUS, Host: host}
	mem := &ferryv1.PreviewUsage{Kind: ferryv1.PreviewResourceKind_PREVIEW_RESOURCE_KIND_MEMORY_BYTES, Host: host}
	n, left := 0, 0
	for _, j := range jobs {
		if j.GetTargetHost() != host {
			continue
		}
		cluster = j.GetTarget().GetCluster()
		if !j.GetOptions().GetAutoStart() {
			left++
			continue
		}
		cpus.Requested += int64(j.GetTarget().GetCpus())
		mem.Requested += j.GetTarget().GetMemoryBytes()
		n++
	}
	cpus.Resource, mem.Resource = cluster, cluster
	var pCPUs, pMem int64
	pN := 0
	for _, p := range planned {
		if p.Host == host {
			pCPUs, pMem, pN = pCPUs+int64(p.CPUs), pMem+p.MemoryBytes, pN+1
		}
	}
	what := fmt.Sprintf("%d VM(s) started on %s", n, host)
	if left > 0 {
		what += fmt.Sprintf(", %d left stopped (auto_start false) not counted", left)
	}
	var h *ferryv1.Host
	for _, x := range c.hosts {
		if x.GetName() == host {
			h = x
		}
	}
	if h == nil {
		cpus.Note = what + "; the host is not connected"
		mem.Note = cpus.Note
		return []*ferryv1.PreviewUsage{settle(cpus), settle(mem)}
	}
	f := h.GetFacts()
	cpus.Known, cpus.Available = f.GetCpus() > 0, int64(f.GetCpus())-int64(f.GetRunningVcpus())-pCPUs
	cpus.Note = fmt.Sprintf("%s; %d CPUs less %d vCPUs of running VMs and %d of %d queued or running job(s) placed there",
		what, f.GetCpus(), f.GetRunningVcpus(), pCPUs, pN)
	mem.Known, mem.Available = f.GetMemoryAvailableBytes() > 0, f.GetMemoryAvailableBytes()-pMem
	mem.Note = fmt.Sprintf("%s; %d bytes available less %d bytes of %d queued or running job(s) placed there",
		what, f.GetMemoryAvailableBytes(), pMem, pN)
	if f.GetMemoryAvailableBytes() == 0 {
		mem.Note = what + "; the host does not report its available memory"
	}
	return []*ferryv1.PreviewUsage{settle(cpus), settle(mem)}
}

// hostDisk is what the batch's disks placed on host take of a local
// storage's free space there, less the disks of the queued and running
// jobs placed there.
func (c *resources) hostDisk(ps *ferryv1.PrimaryStorage, host string, jobs []*ferryv1.MigrationJob, planned []placement.Planned) *ferryv1.PreviewUsage {
	u := &ferryv1.PreviewUsage{Kind: ferryv1.PreviewResourceKind_PREVIEW_RESOURCE_KIND_DISK_BYTES, Resource: ps.GetName(), Host: host}
	for _, j := range jobs {
		if j.GetTargetHost() == host && j.GetTarget().GetPrimaryStorage() == ps.GetName() {
			for _, d := range j.GetTarget().GetDisks() {
				u.Requested += d.GetSizeBytes()
			}
		}
	}
	var taken int64
	for _, p := range planned {
		if p.Host == host && p.Storage == ps.GetName() {
			taken += p.DiskBytes
		}
	}
	for _, h := range c.hosts {
		if h.GetName() != host {
			continue
		}
		for _, s := range h.GetFacts().GetStorages() {
			if s.GetPath() == ps.GetPath() {
				u.Known, u.Available = true, s.GetFreeBytes()-taken
				u.Note = fmt.Sprintf("%d bytes free at %s on %s less %d bytes of the disks of queued or running jobs placed there",
					s.GetFreeBytes(), ps.GetPath(), host, taken)
				return settle(u)
			}
		}
	}
	u.Note = fmt.Sprintf("%s does not report the free space of %s (yet: agents report it a heartbeat after the storage is created)", host, ps.GetPath())
	return settle(u)
}
