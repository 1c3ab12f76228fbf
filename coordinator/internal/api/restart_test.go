package api

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// TestRestartPlacesTheJobAgain: a restarted job is placed again by the
// strategy (its first host in maintenance, then disconnected, it lands on
// another one), the reason saying so; a job whose spec names target.host
// keeps it; a cluster with no host left refuses the restart.
func TestRestartPlacesTheJobAgain(t *testing.T) {
	e := newEnv(t, true)
	e.seed()
	c := ctx(t)
	const (
		queued    = ferryv1.MigrationJobState_MIGRATION_JOB_STATE_QUEUED
		cancelled = ferryv1.MigrationJobState_MIGRATION_JOB_STATE_CANCELLED
	)
	connect := func(host string, on bool) {
		e.apply(&ledgerv1.Command{Op: &ledgerv1.Command_SetHostConnected{SetHostConnected: &ledgerv1.SetHostConnected{Name: host, Connected: on}}})
	}
	maintenance := func(host string, on bool) {
		must[*ferryv1.SetHostMaintenanceResponse](t)(e.inv.SetHostMaintenance(c, &ferryv1.SetHostMaintenanceRequest{Name: host, Maintenance: on}))
	}
	cancel := func(name string) {
		must[*ferryv1.CancelMigrationJobResponse](t)(e.jobs.CancelMigrationJob(c, &ferryv1.CancelMigrationJobRequest{Name: name}))
	}
	restart := func(name, requestID string) (*ferryv1.MigrationJob, error) {
		r, err := e.jobs.RestartMigrationJob(c, &ferryv1.RestartMigrationJobRequest{Name: name, RequestId: requestID})
		return r.GetJob(), err
	}
	check := func(j *ferryv1.MigrationJob, state ferryv1.MigrationJobState, host, reason string) {
		t.Helper()
		if j.GetState() != state || j.GetTargetHost() != host || !strings.HasPrefix(j.GetPlacementReason(), reason) {
			t.Fatalf("job %s %v on %s (%q); want %v on %s (%q…)", j.GetName(), j.GetState(), j.GetTargetHost(), j.GetPlacementReason(), state, host, reason)
		}
		// The API answers what the ledger recorded, as every replica applies it.
		if l, _ := e.ledger.Job(j.GetName()); l.GetTargetHost() != j.GetTargetHost() || l.GetPlacementReason() != j.GetPlacementReason() {
			t.Fatalf("ledger has %s (%q), the answer %s (%q)", l.GetTargetHost(), l.GetPlacementReason(), j.GetTargetHost(), j.GetPlacementReason())
		}
	}

	// Only kvm1 is connected: the job lands there.
	j := must[*ferryv1.CreateMigrationJobsResponse](t)(e.jobs.CreateMigrationJobs(c, jobsReq(1))).GetJobs()[0]
	name := j.GetName()
	check(j, queued, "hosts/kvm1", "allocation strategy fewest_vms: hosts/kvm1")

	// kvm1 goes into maintenance, spare connects: the restart lands on spare.
	cancel(name)
	connect("hosts/spare", true)
	maintenance("hosts/kvm1", true)
	j = must[*ferryv1.MigrationJob](t)(restart(name, "restart-1"))
	check(j, queued, "hosts/spare", "chosen again at restart: allocation strategy fewest_vms: hosts/spare (0 VMs: 0 running, 0 of queued and running jobs); not ")
	if !strings.Contains(j.GetPlacementReason(), "hosts/kvm1 (in maintenance)") || !strings.Contains(j.GetPlacementReason(), "hosts/vm1 (disconnected)") {
		t.Errorf("reason %q does not say why kvm1 and vm1 were passed over", j.GetPlacementReason())
	}
	// The same request_id again answers the job as it is: no second restart.
	cancel(name)
	j = must[*ferryv1.MigrationJob](t)(restart(name, "restart-1"))
	check(j, cancelled, "hosts/spare", "chosen again at restart: allocation strategy fewest_vms: hosts/spare")

	// spare disconnects, kvm1 leaves maintenance: the restart goes back to kvm1.
	connect("hosts/spare", false)
	maintenance("hosts/kvm1", false)
	j = must[*ferryv1.MigrationJob](t)(restart(name, "restart-2"))
	check(j, queued, "hosts/kvm1", "chosen again at restart: allocation strategy fewest_vms: hosts/kvm1 (0 VMs")
	if !strings.Contains(j.GetPlacementReason(), "hosts/spare (disconnected)") {
		t.Errorf("reason %q does not say spare is disconnected", j.GetPlacementReason())
	}

	// No host can take it: the restart is refused and the job left as it was.
	cancel(name)
	maintenance("hosts/kvm1", true)
	_, err := restart(name, "")
	wantCode(t, err, codes.FailedPrecondition, "target.host: no host of cluster clusters/c1 can take the VM: ")
	check(must[*ferryv1.MigrationJob](t)(e.jobs.GetMigrationJob(c, &ferryv1.GetMigrationJobRequest{Name: name})), cancelled, "hosts/kvm1", "chosen again at restart: ")

	// A spec naming target.host keeps it at restart, maintenance or not.
	maintenance("hosts/kvm1", false)
	req := jobsReq(2)
	req.Jobs = req.Jobs[1:]
	req.Jobs[0].Target.Host = "hosts/kvm1"
	named := must[*ferryv1.CreateMigrationJobsResponse](t)(e.jobs.CreateMigrationJobs(c, req)).GetJobs()[0]
	check(named, queued, "hosts/kvm1", "named by target.host")
	cancel(named.GetName())
	connect("hosts/spare", true)
	maintenance("hosts/kvm1", true)
	named = must[*ferryv1.MigrationJob](t)(restart(named.GetName(), ""))
	check(named, queued, "hosts/kvm1", "named by target.host")
	if named.GetPlacementReason() != "named by target.host" {
		t.Errorf("reason %q, want the creation's", named.GetPlacementReason())
	}
}
