package admission

import (
	"errors"
	"fmt"

	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	"github.com/ferry-v2v/ferry/coordinator/internal/placement"
	"github.com/ferry-v2v/ferry/coordinator/internal/validate"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// place is step 6b: the host of each job's VM (package placement),
// stamped into the job with why, each job counting what the queued and
// running jobs and the batch's jobs before it put on the hosts. It
// answers one error per job, nil for a job placed.
func (a *Admission) place(refs *batchRefs, jobs []*ferryv1.MigrationJob) []error {
	hosts := a.placementHosts()
	planned := placement.PlannedOf(a.activeJobs(), a.serverHosts())
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

// activeJobs are the queued and running jobs.
func (a *Admission) activeJobs() []*ferryv1.MigrationJob {
	var out []*ferryv1.MigrationJob
	for _, st := range []ferryv1.MigrationJobState{ferryv1.MigrationJobState_MIGRATION_JOB_STATE_QUEUED, ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING} {
		out = append(out, a.ledger.Jobs(ledger.JobFilter{State: st})...)
	}
	return out
}
