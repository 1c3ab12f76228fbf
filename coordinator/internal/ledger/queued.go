package ledger

import (
	"slices"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// The queued index holds the queued jobs by migration server and waiting
// reason, so the scheduler's pass looks only at the jobs of servers that
// can start them and at those whose waiting reason is to change: 10,000
// jobs queued behind a disabled server, each already saying so, cost it
// nothing.

// queuedIndex is server → waiting reason → job name → job.
type queuedIndex map[string]map[string]map[string]*ferryv1.MigrationJob

// stored keeps the job indexes (by state, planned loads, queued jobs) up to date
// as old, the stored version of a job, is replaced by cur; either may be
// nil (created, deleted). The caller holds the lock.
func (l *Ledger) stored(old, cur *ferryv1.MigrationJob) {
	l.plan(old, cur)
	if old != nil {
		delete(l.byState[old.GetState()], old.GetName())
	}
	if cur != nil {
		if l.byState[cur.GetState()] == nil {
			l.byState[cur.GetState()] = map[string]*ferryv1.MigrationJob{}
		}
		l.byState[cur.GetState()][cur.GetName()] = cur
	}
	if old.GetState() == stateQueued {
		byReason := l.queued[old.GetMigrationServer()]
		delete(byReason[old.GetWaitingReason()], old.GetName())
		if len(byReason[old.GetWaitingReason()]) == 0 {
			delete(byReason, old.GetWaitingReason())
		}
		if len(byReason) == 0 {
			delete(l.queued, old.GetMigrationServer())
		}
	}
	if cur.GetState() == stateQueued {
		byReason := l.queued[cur.GetMigrationServer()]
		if byReason == nil {
			byReason = map[string]map[string]*ferryv1.MigrationJob{}
			l.queued[cur.GetMigrationServer()] = byReason
		}
		byName := byReason[cur.GetWaitingReason()]
		if byName == nil {
			byName = map[string]*ferryv1.MigrationJob{}
			byReason[cur.GetWaitingReason()] = byName
		}
		byName[cur.GetName()] = cur
	}
}

// indexAllStored rebuilds the job indexes from l.jobs.
func (l *Ledger) indexAllStored() {
	l.planned = map[plannedKey]*PlannedLoad{}
	l.queued = queuedIndex{}
	l.byState = map[ferryv1.MigrationJobState]map[string]*ferryv1.MigrationJob{}
	for _, j := range l.jobs {
		l.stored(nil, j)
	}
}

// QueuedServers returns, sorted, the migration servers named by queued
// jobs, including servers that no longer exist.
func (l *Ledger) QueuedServers() []string {
	l.mu.RLock()
	out := make([]string, 0, len(l.queued))
	for s := range l.queued {
		out = append(out, s)
	}
	l.mu.RUnlock()
	slices.Sort(out)
	return out
}

// VisitQueued calls visit with each queued job of a migration server
// whose waiting reason keep accepts, in no order, until visit returns
// false. Like VisitJobs it does not copy: visit must neither keep nor
// change the job, and must not call back into the ledger.
func (l *Ledger) VisitQueued(server string, keep func(waitingReason string) bool, visit func(*ferryv1.MigrationJob) bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	for reason, byName := range l.queued[server] {
		if !keep(reason) {
			continue
		}
		for _, j := range byName {
			if !visit(j) {
				return
			}
		}
	}
}
