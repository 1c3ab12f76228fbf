package admission

import (
	"fmt"
	"strings"

	"github.com/ferry-v2v/ferry/coordinator/internal/capacity"
	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// resources are what a preview compares a batch with: the connected hosts'
// facts and the jobs that are queued or running.
type resources struct {
	server *ferryv1.MigrationServer
	hosts  []*ferryv1.Host // connected, with their latest facts
	active []*ferryv1.MigrationJob
}

// cache is what the batch writes to its migration server's cache against
// the room the scheduler admits jobs by (package capacity): the free space
// of the server's cache_path as its host's agent reports it, less what the
// server's running jobs reserve.
func (c *resources) cache(jobs []*ferryv1.MigrationJob) *ferryv1.PreviewUsage {
	u := &ferryv1.PreviewUsage{Kind: ferryv1.PreviewResourceKind_PREVIEW_RESOURCE_KIND_CACHE_BYTES, Resource: c.server.GetName()}
	for _, j := range jobs {
		u.Requested += capacity.JobBytes(j)
	}
	facts := map[string]*ferryv1.HostFacts{}
	for _, h := range c.hosts {
		facts[h.GetName()] = h.GetFacts()
	}
	rooms := capacity.NewRooms(facts)
	rooms.ReserveRunning(c.active)
	room := rooms.Room(c.server)
	if facts[hostRef(c.server.GetHost())] == nil {
		u.Note = fmt.Sprintf("the migration server's host %s is not connected", c.server.GetHost())
		return settle(u)
	}
	u.Known, u.Available, u.Note = room.Known, room.Available(), room.Note()
	return settle(u)
}

// hostRef is a host reference as a resource name.
func hostRef(h string) string {
	if h == "" || strings.HasPrefix(h, "hosts/") {
		return h
	}
	return "hosts/" + h
}

func (a *Admission) newResources(server *ferryv1.MigrationServer) *resources {
	c := &resources{server: server, hosts: a.connectedHosts()}
	for _, st := range []ferryv1.MigrationJobState{ferryv1.MigrationJobState_MIGRATION_JOB_STATE_QUEUED, ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING} {
		c.active = append(c.active, a.ledger.Jobs(ledger.JobFilter{State: st})...)
	}
	return c
}

// connectedHosts are the hosts whose agents are connected, with their
// latest facts: the session manager's live ones on the leader, else what
// the ledger last recorded.
func (a *Admission) connectedHosts() []*ferryv1.Host {
	var live map[string]*ferryv1.HostFacts
	if lf, ok := a.agents.(liveFacts); ok {
		live = lf.Hosts()
	}
	var out []*ferryv1.Host
	for _, h := range a.ledger.Hosts("") {
		if f, ok := live[h.GetName()]; ok {
			h.Facts, h.Connected = f, true
		}
		if h.GetConnected() {
			out = append(out, h)
		}
	}
	return out
}

// computeHosts are the connected hosts a cluster's VMs may run on: its own,
// and the migration server's host when a job writes local storage there.
func (c *resources) computeHosts(cluster string, jobs []*ferryv1.MigrationJob, local func(string) bool) []*ferryv1.Host {
	var out []*ferryv1.Host
	serverHost := false
	for _, j := range jobs {
		serverHost = serverHost || j.GetTarget().GetCluster() == cluster && local(j.GetTarget().GetPrimaryStorage())
	}
	for _, h := range c.hosts {
		if h.GetCluster() == cluster || serverHost && h.GetName() == c.server.GetHost() {
			out = append(out, h)
		}
	}
	return out
}

// started sums the vCPUs and memory of the jobs in cluster whose target VM
// is started when they finish.
func started(cluster string, jobs []*ferryv1.MigrationJob) (cpus, mem int64, n, left int) {
	for _, j := range jobs {
		t := j.GetTarget()
		if t.GetCluster() != cluster {
			continue
		}
		if !j.GetOptions().GetAutoStart() {
			left++
			continue
		}
		cpus, mem, n = cpus+int64(t.GetCpus()), mem+t.GetMemoryBytes(), n+1
	}
	return cpus, mem, n, left
}

// compute is what the batch takes of a cluster's CPUs and available memory:
// the VMs it starts against the connected hosts' CPUs and MemAvailable,
// less what the queued and running jobs' VMs will take once started. The
// vCPUs of VMs already running are not known (facts count the VMs only);
// their memory is already out of MemAvailable.
func (c *resources) compute(cluster string, jobs []*ferryv1.MigrationJob, local func(string) bool) []*ferryv1.PreviewUsage {
	cpus := &ferryv1.PreviewUsage{Kind: ferryv1.PreviewResourceKind_PREVIEW_RESOURCE_KIND_VCPUS, Resource: cluster}
	mem := &ferryv1.PreviewUsage{Kind: ferryv1.PreviewResourceKind_PREVIEW_RESOURCE_KIND_MEMORY_BYTES, Resource: cluster}
	var n, left int
	cpus.Requested, mem.Requested, n, left = started(cluster, jobs)
	aCPUs, aMem, aN, _ := started(cluster, c.active)
	hosts := c.computeHosts(cluster, jobs, local)
	var hostCPUs, hostMem int64
	memHosts := 0
	for _, h := range hosts {
		hostCPUs += int64(h.GetFacts().GetCpus())
		if m := h.GetFacts().GetMemoryAvailableBytes(); m > 0 {
			hostMem += m
			memHosts++
		}
	}
	what := fmt.Sprintf("%d VM(s) started", n)
	if left > 0 {
		what += fmt.Sprintf(", %d left stopped (auto_start false) not counted", left)
	}
	switch {
	case len(hosts) == 0:
		cpus.Note = fmt.Sprintf("%s; no connected host in %s reports its CPUs", what, cluster)
		mem.Note = fmt.Sprintf("%s; no connected host in %s reports its memory", what, cluster)
		return []*ferryv1.PreviewUsage{settle(cpus), settle(mem)}
	}
	cpus.Known, cpus.Available = hostCPUs > 0, hostCPUs-aCPUs
	cpus.Note = fmt.Sprintf("%s; %d CPUs on %d connected host(s) less %d vCPUs of %d queued or running job(s); vCPUs of VMs already running are not known",
		what, hostCPUs, len(hosts), aCPUs, aN)
	mem.Known, mem.Available = memHosts > 0, hostMem-aMem
	mem.Note = fmt.Sprintf("%s; %d bytes available on %d of %d connected host(s) less %d bytes of %d queued or running job(s)",
		what, hostMem, memHosts, len(hosts), aMem, aN)
	if memHosts < len(hosts) {
		mem.Note += fmt.Sprintf("; %d host(s) do not report available memory", len(hosts)-memHosts)
	}
	return []*ferryv1.PreviewUsage{settle(cpus), settle(mem)}
}

// disk is what the batch writes to a primary storage against the free
// space an agent reports for its path: the migration server's host for
// local storage, any connected host of the cluster for NFS. The disks of
// queued and running jobs on it are taken off whole, though a running job
// may have written some already: the answer errs on the safe side. Ceph
// and shared block space is not reported.
func (c *resources) disk(ps *ferryv1.PrimaryStorage, jobs []*ferryv1.MigrationJob) *ferryv1.PreviewUsage {
	u := &ferryv1.PreviewUsage{Kind: ferryv1.PreviewResourceKind_PREVIEW_RESOURCE_KIND_DISK_BYTES, Resource: ps.GetName()}
	u.Requested = diskBytes(ps.GetName(), "", jobs)
	local := ps.GetType() == ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_LOCAL
	switch ps.GetType() {
	case ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_LOCAL, ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_NFS:
	default:
		u.Note = fmt.Sprintf("agents do not report the free space of %s storage", storageTypeName(ps.GetType()))
		return settle(u)
	}
	for _, h := range c.hosts {
		if local && h.GetName() != c.server.GetHost() || !local && h.GetCluster() != ps.GetCluster() {
			continue
		}
		for _, s := range h.GetFacts().GetStorages() {
			if s.GetPath() != ps.GetPath() {
				continue
			}
			server := ""
			if local {
				server = c.server.GetName() // other servers write their own hosts' directories
			}
			taken := diskBytes(ps.GetName(), server, c.active)
			u.Known, u.Available = true, s.GetFreeBytes()-taken
			u.Note = fmt.Sprintf("%d bytes free at %s on %s less %d bytes of the disks of queued or running jobs",
				s.GetFreeBytes(), ps.GetPath(), h.GetName(), taken)
			return settle(u)
		}
	}
	where := "no connected host of " + ps.GetCluster()
	if local {
		where = "the migration server's host " + c.server.GetHost()
	}
	u.Note = fmt.Sprintf("%s does not report the free space of %s (yet: agents report it a heartbeat after the storage is created)", where, ps.GetPath())
	return settle(u)
}

// diskBytes sums the target disk sizes of the jobs writing storage, of one
// migration server's jobs when server is set.
func diskBytes(storage, server string, jobs []*ferryv1.MigrationJob) int64 {
	var n int64
	for _, j := range jobs {
		if j.GetTarget().GetPrimaryStorage() != storage || server != "" && j.GetMigrationServer() != server {
			continue
		}
		for _, d := range j.GetTarget().GetDisks() {
			n += d.GetSizeBytes()
		}
	}
	return n
}

func storageTypeName(t ferryv1.PrimaryStorageType) string {
	switch t {
	case ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_CEPH:
		return "Ceph"
	case ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_SHAREDBLOCK:
		return "shared block"
	}
	return t.String()
}
