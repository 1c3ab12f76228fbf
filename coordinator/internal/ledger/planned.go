package ledger

import (
	"cmp"
	"slices"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// The planned index adds up, as jobs are stored, what the queued and
// running jobs will put on hosts, so placement reads a few totals
// instead of copying every active job: a batch is placed at the same cost
// with 100 jobs in the ledger as with 10,000.

// PlannedLoad is what the queued and running jobs with one target_host
// (or, for jobs placed before placement existed, none and one migration
// server) and one primary storage add up to.
type PlannedLoad struct {
	// TargetHost is the jobs' target_host; "" for jobs without one, which
	// land on their MigrationServer's host.
	TargetHost      string
	MigrationServer string
	PrimaryStorage  string
	VMs             int
	CPUs            int64
	MemoryBytes     int64
	DiskBytes       int64
}

type plannedKey struct{ host, server, storage string }

// plannedKeyOf is where j counts; ok is false for a job that counts
// nowhere (finished, or nil).
func plannedKeyOf(j *ferryv1.MigrationJob) (k plannedKey, ok bool) {
	if j == nil || (j.GetState() != stateQueued && j.GetState() != stateRunning) {
		return plannedKey{}, false
	}
	k = plannedKey{host: j.GetTargetHost(), storage: j.GetTarget().GetPrimaryStorage()}
	if k.host == "" {
		k.server = j.GetMigrationServer()
	}
	return k, true
}

// plan moves a job's count from its stored version old to cur, the one
// replacing it; either may be nil (created, deleted). The caller (stored)
// holds the lock.
func (l *Ledger) plan(old, cur *ferryv1.MigrationJob) {
	if k, ok := plannedKeyOf(old); ok {
		l.addPlanned(k, old, -1)
	}
	if k, ok := plannedKeyOf(cur); ok {
		l.addPlanned(k, cur, 1)
	}
}

func (l *Ledger) addPlanned(k plannedKey, j *ferryv1.MigrationJob, sign int64) {
	p := l.planned[k]
	if p == nil {
		p = &PlannedLoad{TargetHost: k.host, MigrationServer: k.server, PrimaryStorage: k.storage}
		l.planned[k] = p
	}
	t := j.GetTarget()
	var disk int64
	for _, d := range t.GetDisks() {
		disk += d.GetSizeBytes()
	}
	p.VMs += int(sign)
	p.CPUs += sign * int64(t.GetCpus())
	p.MemoryBytes += sign * t.GetMemoryBytes()
	p.DiskBytes += sign * disk
	if p.VMs == 0 {
		delete(l.planned, k)
	}
}

// PlannedLoads returns what the queued and running jobs add up to, by
// target host (or migration server) and primary storage, in a stable
// order.
func (l *Ledger) PlannedLoads() []PlannedLoad {
	l.mu.RLock()
	out := make([]PlannedLoad, 0, len(l.planned))
	for _, p := range l.planned {
		out = append(out, *p)
	}
	l.mu.RUnlock()
	slices.SortFunc(out, func(a, b PlannedLoad) int {
		return cmp.Or(cmp.Compare(a.TargetHost, b.TargetHost), cmp.Compare(a.MigrationServer, b.MigrationServer),
			cmp.Compare(a.PrimaryStorage, b.PrimaryStorage))
	})
	return out
}
