package scheduler

import (
	"fmt"
	"slices"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferry-v2v/ferry/coordinator/internal/capacity"
	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// state is what one pass knows: the ledger as it read it, the agents'
// facts, and the jobs it started itself.
type state struct {
	ledger   *ledger.Ledger
	agents   Agents
	limit    int
	running  int
	reserved map[string]int64 // by migration server
	facts    map[string]*ferryv1.HostFacts
	servers  map[string]*ferryv1.MigrationServer
}

func newState(l *ledger.Ledger, agents Agents) *state {
	st := &state{ledger: l, agents: agents, reserved: map[string]int64{}, facts: agents.Hosts(),
		servers: map[string]*ferryv1.MigrationServer{}}
	st.limit = int(l.Settings().GetJobParallelism())
	if st.limit <= 0 {
		st.limit = ledger.DefaultJobParallelism
	}
	l.VisitJobs(ledger.JobFilter{State: ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING}, func(j *ferryv1.MigrationJob) bool {
		st.running++
		st.reserved[j.GetMigrationServer()] += capacity.JobBytes(j)
		return true
	})
	return st
}

// queued returns the queued jobs, oldest first.
func (st *state) queued() []*ferryv1.MigrationJob {
	var jobs []*ferryv1.MigrationJob
	st.ledger.VisitJobs(ledger.JobFilter{State: ferryv1.MigrationJobState_MIGRATION_JOB_STATE_QUEUED}, func(j *ferryv1.MigrationJob) bool {
		jobs = append(jobs, summary(j))
		return true
	})
	slices.SortStableFunc(jobs, bySubmission)
	return jobs
}

// summary copies the fields a pass reads of a queued job, without the
// deep copy Jobs makes: a pass may look at thousands of queued jobs. The
// disks are shared with the ledger, whose values are never changed in
// place, and only read here.
func summary(j *ferryv1.MigrationJob) *ferryv1.MigrationJob {
	return &ferryv1.MigrationJob{
		Name: j.GetName(), MigrationServer: j.GetMigrationServer(), Epoch: j.GetEpoch(), TargetHost: j.GetTargetHost(),
		WaitingReason: j.GetWaitingReason(), CreateTime: j.GetCreateTime(),
		Target: &ferryv1.TargetVm{Disks: j.GetTarget().GetDisks()},
	}
}

func (st *state) server(name string) (*ferryv1.MigrationServer, bool) {
	if s, ok := st.servers[name]; ok {
		return s, s != nil
	}
	s, ok := st.ledger.MigrationServer(name)
	st.servers[name] = s
	return s, ok
}

// host is where j runs: its migration server's host.
func (st *state) host(j *ferryv1.MigrationJob) string {
	s, _ := st.server(j.GetMigrationServer())
	return hostName(s.GetHost())
}

// blocker says why j cannot start now, or "" when it can. What concerns
// the job and its server comes before the cluster-wide parallelism.
func (st *state) blocker(j *ferryv1.MigrationJob) string {
	srv, ok := st.server(j.GetMigrationServer())
	if !ok {
		return fmt.Sprintf("migration server %s does not exist", j.GetMigrationServer())
	}
	host := hostName(srv.GetHost())
	if !srv.GetEnabled() {
		return fmt.Sprintf("migration server %s is disabled", srv.GetName())
	}
	if !st.agents.Connected(host) {
		return fmt.Sprintf("host %s is not connected", host)
	}
	// The job's VM is placed on another host, whose agent makes its
	// volumes and domain: it must be there when the job starts.
	if th := j.GetTargetHost(); th != "" && hostName(th) != host && !st.agents.Connected(hostName(th)) {
		return fmt.Sprintf("target host %s is not connected", hostName(th))
	}
	room := capacity.Cache(srv, st.facts[host], st.reserved[srv.GetName()])
	if why := room.Blocker(capacity.JobBytes(j)); why != "" {
		return why
	}
	if st.running >= st.limit {
		return fmt.Sprintf("job parallelism %d reached", st.limit)
	}
	return ""
}

// started counts j, which this pass just started.
func (st *state) started(j *ferryv1.MigrationJob) {
	st.running++
	st.reserved[j.GetMigrationServer()] += capacity.JobBytes(j)
}

var timestampOf = timestamppb.New
