package scheduler

import (
	"fmt"
	"slices"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferry-v2v/ferry/coordinator/internal/capacity"
	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// state is what one pass knows: the ledger as it read it, the caches'
// room as the agents report it (package capacity, as the preview reads
// it), and the jobs it started itself.
type state struct {
	ledger  *ledger.Ledger
	agents  Agents
	limit   int
	running int
	rooms   *capacity.Rooms
	servers map[string]*ferryv1.MigrationServer
}

func newState(l *ledger.Ledger, agents Agents) *state {
	st := &state{ledger: l, agents: agents, rooms: capacity.NewRooms(agents.Hosts()),
		servers: map[string]*ferryv1.MigrationServer{}}
	st.limit = int(l.Settings().GetJobParallelism())
	if st.limit <= 0 {
		st.limit = ledger.DefaultJobParallelism
	}
	l.VisitJobs(ledger.JobFilter{State: ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING}, func(j *ferryv1.MigrationJob) bool {
		st.running++
		st.rooms.Reserve(j)
		return true
	})
	return st
}

// waiting is a queued job that cannot start in this pass, and why.
type waiting struct{ name, reason, was string }

// queued returns the queued jobs that may start, oldest first, and the
// others whose waiting reason is to change: those whose migration server
// is missing, disabled or not connected, which nothing in this pass
// changes. It reads the ledger's queued index, so the jobs that already
// say why they wait are not looked at: a pass over 10,000 jobs queued
// behind a disabled server costs nothing for them.
func (st *state) queued() ([]*ferryv1.MigrationJob, []waiting) {
	blocked := st.serverBlockers()
	var jobs []*ferryv1.MigrationJob
	var waits []waiting
	for _, server := range st.ledger.QueuedServers() {
		reason, ok := blocked[server]
		if !ok {
			reason = fmt.Sprintf("migration server %s does not exist", server)
		}
		keep := func(was string) bool { return reason == "" || was != reason }
		st.ledger.VisitQueued(server, keep, func(j *ferryv1.MigrationJob) bool {
			if reason == "" {
				jobs = append(jobs, summary(j))
			} else {
				waits = append(waits, waiting{j.GetName(), reason, j.GetWaitingReason()})
			}
			return true
		})
	}
	slices.SortStableFunc(jobs, bySubmission)
	return jobs, waits
}

// serverBlockers says, for every migration server, why its jobs cannot
// start now ("" when they may), as blocker does; read before VisitJobs,
// which must not call back into the ledger.
func (st *state) serverBlockers() map[string]string {
	out := map[string]string{}
	for _, srv := range st.ledger.MigrationServers(ferryv1.Platform_PLATFORM_UNSPECIFIED) {
		st.servers[srv.GetName()] = srv
		out[srv.GetName()] = st.serverBlocker(srv)
	}
	return out
}

// serverBlocker says why no job of srv can start now, "" when they may.
func (st *state) serverBlocker(srv *ferryv1.MigrationServer) string {
	host := hostName(srv.GetHost())
	if !srv.GetEnabled() {
		return fmt.Sprintf("migration server %s is disabled", srv.GetName())
	}
	if !st.agents.Connected(host) {
		return fmt.Sprintf("host %s is not connected", host)
	}
	return ""
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
	if why := st.serverBlocker(srv); why != "" {
		return why
	}
	// The job's VM is placed on another host, whose agent makes its
	// volumes and domain: it must be there when the job starts.
	if th := j.GetTargetHost(); th != "" && hostName(th) != hostName(srv.GetHost()) && !st.agents.Connected(hostName(th)) {
		return fmt.Sprintf("target host %s is not connected", hostName(th))
	}
	if why := st.rooms.Room(srv).Blocker(capacity.JobBytes(j)); why != "" {
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
	st.rooms.Reserve(j)
}

var timestampOf = timestamppb.New
