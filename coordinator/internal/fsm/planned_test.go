package fsm

import (
	"fmt"
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/hashicorp/raft"

	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// recountPlanned adds up the queued and running jobs the slow way, as
// the ledger's planned index must.
func recountPlanned(l *ledger.Ledger) []ledger.PlannedLoad {
	by := map[[3]string]*ledger.PlannedLoad{}
	for _, j := range l.Jobs(ledger.JobFilter{}) {
		if s := j.GetState(); s != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_QUEUED && s != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING {
			continue
		}
		k := [3]string{j.GetTargetHost(), "", j.GetTarget().GetPrimaryStorage()}
		if k[0] == "" {
			k[1] = j.GetMigrationServer()
		}
		p := by[k]
		if p == nil {
			p = &ledger.PlannedLoad{TargetHost: k[0], MigrationServer: k[1], PrimaryStorage: k[2]}
			by[k] = p
		}
		p.VMs++
		p.CPUs += int64(j.GetTarget().GetCpus())
		p.MemoryBytes += j.GetTarget().GetMemoryBytes()
		for _, d := range j.GetTarget().GetDisks() {
			p.DiskBytes += d.GetSizeBytes()
		}
	}
	var out []ledger.PlannedLoad
	for _, p := range by {
		out = append(out, *p)
	}
	return out
}

func samePlanned(a, b []ledger.PlannedLoad) bool {
	key := func(p ledger.PlannedLoad) string {
		return p.TargetHost + "|" + p.MigrationServer + "|" + p.PrimaryStorage
	}
	cmpKey := func(x, y ledger.PlannedLoad) int {
		if key(x) < key(y) {
			return -1
		}
		if key(x) > key(y) {
			return 1
		}
		return 0
	}
	a, b = slices.Clone(a), slices.Clone(b)
	slices.SortFunc(a, cmpKey)
	slices.SortFunc(b, cmpKey)
	return slices.Equal(a, b)
}

// TestJobIndexesFollowEveryCommand checks the ledger's totals of queued
// and running jobs, which placement reads, and its index of queued jobs
// by server and waiting reason, which the scheduler reads, and its jobs
// by state (Jobs and VisitJobs given a state), against a recount of the
// jobs after every command (created, given a waiting
// reason, started, finished, cancelled, restarted onto another host,
// deleted, cancelled with their migration server), and after a snapshot
// is restored.
func TestJobIndexesFollowEveryCommand(t *testing.T) {
	f := New(ledger.New(), nil)
	cmds := append(everyCommand(),
		cmdAt(200, &ledgerv1.Command{Op: &ledgerv1.Command_CreateMigrationJobs{CreateMigrationJobs: &ledgerv1.CreateMigrationJobs{
			Jobs: []*ferryv1.MigrationJob{placedJob("migrationJobs/j5", "10.0.0.14", "hosts/h1"), placedJob("migrationJobs/j6", "10.0.0.15", "hosts/h1")}}}}),
		cmdAt(201, &ledgerv1.Command{Op: &ledgerv1.Command_StartMigrationJob{StartMigrationJob: &ledgerv1.StartMigrationJob{Name: "migrationJobs/j5", Host: "hosts/h1", Epoch: 1}}}),
		cmdAt(202, &ledgerv1.Command{Op: &ledgerv1.Command_UpdateResource{UpdateResource: &ledgerv1.UpdateResource{
			Resource: &ledgerv1.UpdateResource_MigrationJob{MigrationJob: &ferryv1.MigrationJob{Name: "migrationJobs/j6", Description: "relabelled"}},
			Paths:    []string{"description"}}}}),
	)
	var sawSome bool
	for i, c := range cmds {
		b, err := Encode(c)
		if err != nil {
			t.Fatal(err)
		}
		if res := f.Apply(&raft.Log{Index: uint64(i + 1), Type: raft.LogCommand, Data: b}).(Result); res.Err != nil {
			t.Fatalf("command %d (%T): %v", i, c.GetOp(), res.Err)
		}
		got, want := f.Ledger().PlannedLoads(), recountPlanned(f.Ledger())
		if !samePlanned(got, want) {
			t.Fatalf("after command %d (%T): planned loads %+v, recount %+v", i, c.GetOp(), got, want)
		}
		sawSome = sawSome || len(got) > 1
		if err := checkQueued(f.Ledger()); err != "" {
			t.Fatalf("after command %d (%T): %s", i, c.GetOp(), err)
		}
		if err := checkByState(f.Ledger()); err != "" {
			t.Fatalf("after command %d (%T): %s", i, c.GetOp(), err)
		}
	}
	if !sawSome {
		t.Fatal("never more than one planned load: the test covers too little")
	}
	want := f.Ledger().PlannedLoads()
	if len(want) == 0 || want[0].VMs == 0 {
		t.Fatalf("planned loads at the end = %+v; want j2, j3, j5 and j6 counted", want)
	}
	g := restored(t, f)
	if got := g.Ledger().PlannedLoads(); !slices.Equal(got, want) {
		t.Fatalf("restored planned loads %+v, want %+v", got, want)
	}
	if err := checkQueued(g.Ledger()); err != "" {
		t.Fatalf("restored: %s", err)
	}
	if err := checkByState(g.Ledger()); err != "" {
		t.Fatalf("restored: %s", err)
	}
	if _, err := g.ApplyCommand(cmdAt(300, &ledgerv1.Command{Op: &ledgerv1.Command_DeleteMigrationServer{DeleteMigrationServer: &ledgerv1.DeleteResource{Name: "migrationServers/ms1"}}})); err != nil {
		t.Fatal(err)
	}
	if got := g.Ledger().PlannedLoads(); len(got) != 0 {
		t.Fatalf("planned loads once every job was cancelled with its server = %+v, want none", got)
	}
	if got := g.Ledger().QueuedServers(); len(got) != 0 {
		t.Fatalf("queued servers once every job was cancelled with its server = %v, want none", got)
	}
}

func placedJob(name, ip, host string) *ferryv1.MigrationJob {
	j := job(name, ip)
	j.TargetHost = host
	j.Target.Cpus, j.Target.MemoryBytes = 4, 3<<30
	return j
}

// checkQueued compares the ledger's queued index with the queued jobs,
// by server and waiting reason; "" when they agree.
func checkQueued(l *ledger.Ledger) string {
	want := map[string]map[string][]string{} // server → reason → names
	for _, j := range l.Jobs(ledger.JobFilter{State: ferryv1.MigrationJobState_MIGRATION_JOB_STATE_QUEUED}) {
		if want[j.GetMigrationServer()] == nil {
			want[j.GetMigrationServer()] = map[string][]string{}
		}
		want[j.GetMigrationServer()][j.GetWaitingReason()] = append(want[j.GetMigrationServer()][j.GetWaitingReason()], j.GetName())
	}
	servers := l.QueuedServers()
	if len(servers) != len(want) {
		return fmt.Sprintf("queued servers %v, want those of %v", servers, want)
	}
	for _, s := range servers {
		for reason, names := range want[s] {
			var got []string
			l.VisitQueued(s, func(r string) bool { return r == reason }, func(j *ferryv1.MigrationJob) bool {
				got = append(got, j.GetName())
				return true
			})
			slices.Sort(got)
			if !slices.Equal(got, names) {
				return fmt.Sprintf("queued on %s waiting for %q: %v, want %v", s, reason, got, names)
			}
		}
		n := 0
		l.VisitQueued(s, func(string) bool { return true }, func(*ferryv1.MigrationJob) bool { n++; return true })
		total := 0
		for _, names := range want[s] {
			total += len(names)
		}
		if n != total {
			return fmt.Sprintf("%d jobs queued on %s, want %d", n, s, total)
		}
	}
	return ""
}

// checkByState compares the jobs of each state, as the ledger's index by
// state lists them, with the jobs of that state among all; "" when they
// agree.
func checkByState(l *ledger.Ledger) string {
	all := l.Jobs(ledger.JobFilter{})
	for st := range ferryv1.MigrationJobState_name {
		state := ferryv1.MigrationJobState(st)
		if state == ferryv1.MigrationJobState_MIGRATION_JOB_STATE_UNSPECIFIED {
			continue
		}
		var want, got, visited []string
		stored := map[string]*ferryv1.MigrationJob{}
		for _, j := range all {
			if j.GetState() == state {
				want = append(want, j.GetName())
				stored[j.GetName()] = j
			}
		}
		for _, j := range l.Jobs(ledger.JobFilter{State: state}) {
			got = append(got, j.GetName())
			if !proto.Equal(j, stored[j.GetName()]) {
				return fmt.Sprintf("%s jobs: the index holds %s as %v, the ledger as %v", state, j.GetName(), j, stored[j.GetName()])
			}
		}
		l.VisitJobs(ledger.JobFilter{State: state}, func(j *ferryv1.MigrationJob) bool {
			visited = append(visited, j.GetName())
			return true
		})
		slices.Sort(visited)
		if !slices.Equal(got, want) || !slices.Equal(visited, want) {
			return fmt.Sprintf("%s jobs: listed %v, visited %v, want %v", state, got, visited, want)
		}
	}
	return ""
}
