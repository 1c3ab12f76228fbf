package admission

import (
	"errors"
	"fmt"
	"math"
	"sync"

	"github.com/ferry-v2v/ferry/coordinator/internal/placement"
	"github.com/ferry-v2v/ferry/coordinator/internal/validate"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// place is step 6b: the host of each job's VM (package placement),
// stamped into the job with why, each job counting what the queued and
// running jobs and the batch's jobs before it put on the hosts. It
// answers one error per job, nil for a job placed.
func (a *Admission) place(refs *batchRefs, jobs []*ferryv1.MigrationJob) []error {
	hosts := a.placementHosts()
	planned := a.planned()
	strategy := a.ledger.Settings().GetHostAllocationStrategy()
	errs := make([]error, len(jobs))
	for i, j := range jobs {
		t := j.GetTarget()
		ps, _ := a.ledger.PrimaryStorage(t.GetPrimaryStorage()) // checkTargetRefs found it
		c, err := placement.Place(placement.Input{Cluster: t.GetCluster(), Hosts: hosts, Strategy: strategy,
			MigrationServerHost: hostRef(refs.server.GetHost()), Storage: ps, Planned: planned}, t)
		if err != nil {
			errs[i] = placementError(fmt.Sprintf("jobs[%d].target", i), t, err)
			continue
		}
		j.TargetHost, j.PlacementReason = c.Host, c.Reason
		planned = append(planned, placement.PlannedVM(c.Host, ps.GetName(), t))
	}
	return errs
}

// serverHosts maps every migration server to its host.
func (a *Admission) serverHosts() map[string]string {
	out := map[string]string{}
	for _, s := range a.ledger.MigrationServers(ferryv1.Platform_PLATFORM_UNSPECIFIED) {
		out[s.GetName()] = hostRef(s.GetHost())
	}
	return out
}

// placedOn reports whether a job of the batch placed on host writes storage.
func placedOn(jobs []*ferryv1.MigrationJob, host, storage string) bool {
	for _, j := range jobs {
		if j.GetTargetHost() == host && j.GetTarget().GetPrimaryStorage() == storage {
			return true
		}
	}
	return false
}

// placementError is a placement refusal as the API gives it, the field
// named from the request's root.
func placementError(prefix string, t *ferryv1.TargetVm, err error) error {
	var pe *placement.Error
	if !errors.As(err, &pe) {
		return err
	}
	field := prefix + "." + pe.Field
	switch pe.Kind {
	case placement.NotFound:
		return validate.NotFound(field, t.GetHost())
	case placement.Invalid:
		return validate.Invalid(field, "%s", pe.Msg)
	default:
		return validate.Precondition(field, "%s", pe.Msg)
	}
}

// placementHosts are the ledger's hosts, connected as the ledger records
// it, with the latest facts of the agents this node's sessions hold.
func (a *Admission) placementHosts() []*ferryv1.Host {
	var live map[string]*ferryv1.HostFacts
	if lf, ok := a.agents.(liveFacts); ok {
		live = lf.Hosts()
	}
	hosts := a.ledger.Hosts("")
	for _, h := range hosts {
		if f, ok := live[h.GetName()]; ok {
			h.Facts, h.Connected = f, true
		}
	}
	return hosts
}

// planned is what the queued and running jobs will add to hosts, as
// placement.PlannedOf counts them (each on its target_host, else on its
// migration server's host), read from the ledger's totals rather than
// from a copy of every job, so placing a batch does not cost more as the
// ledger grows.
func (a *Admission) planned() []placement.Planned {
	serverHost := a.serverHosts()
	loads := a.ledger.PlannedLoads()
	out := make([]placement.Planned, 0, len(loads))
	for _, p := range loads {
		host := p.TargetHost
		if host == "" {
			host = serverHost[p.MigrationServer]
		}
		if host == "" {
			continue
		}
		out = append(out, placement.Planned{Host: host, VMs: p.VMs, CPUs: int32(min(p.CPUs, math.MaxInt32)), MemoryBytes: p.MemoryBytes,
			Storage: p.PrimaryStorage, DiskBytes: p.DiskBytes})
	}
	return out
}

// RestartReasonPrefix starts the placement_reason of a job placed again
// when it was restarted.
const RestartReasonPrefix = "chosen again at restart: "

// Restarted is a restart ready to be proposed. It holds the allocation
// lock until Release, as Admitted does, so a concurrent batch counts the
// restarted job on its new host.
type Restarted struct {
	// Command is RestartMigrationJob, the new host stamped in when the job
	// was placed again.
	Command *ledgerv1.RestartMigrationJob
	release func()
}

// Release lets the next batch place its jobs. Call it once the command
// was applied or refused.
func (r *Restarted) Release() { r.release() }

// Restart places a failed or cancelled job again, as its creation did
// (same strategy, counting the queued and running jobs), unless its spec
// names target.host: then, as for a job that cannot be restarted (the
// ledger refuses the command), the command keeps the job's host. A host
// that can no longer take the VM is refused (FAILED_PRECONDITION on
// target.host, the restart not made).
func (a *Admission) Restart(name string) (*Restarted, error) {
	cmd := &ledgerv1.RestartMigrationJob{Name: name}
	a.allocMu.Lock()
	release := sync.OnceFunc(a.allocMu.Unlock)
	j, ok := a.ledger.Job(name)
	if !ok || j.GetTarget().GetHost() != "" || j.GetExport() != nil || !restartable(j) {
		return &Restarted{Command: cmd, release: release}, nil
	}
	t := j.GetTarget()
	ps, _ := a.ledger.PrimaryStorage(t.GetPrimaryStorage())
	var serverHost string
	if s, ok := a.ledger.MigrationServer(j.GetMigrationServer()); ok {
		serverHost = hostRef(s.GetHost())
	}
	c, err := placement.Place(placement.Input{Cluster: t.GetCluster(), Hosts: a.placementHosts(),
		Strategy: a.ledger.Settings().GetHostAllocationStrategy(), MigrationServerHost: serverHost, Storage: ps,
		Planned: a.planned()}, t)
	if err != nil {
		release()
		return nil, placementError("target", t, err)
	}
	cmd.TargetHost, cmd.PlacementReason = c.Host, RestartReasonPrefix+c.Reason
	return &Restarted{Command: cmd, release: release}, nil
}

func restartable(j *ferryv1.MigrationJob) bool {
	s := j.GetState()
	return s == ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED || s == ferryv1.MigrationJobState_MIGRATION_JOB_STATE_CANCELLED
}
