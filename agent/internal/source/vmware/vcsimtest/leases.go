package vcsimtest

import (
	"slices"
	"sync"
)

// Lease states as the record keeps them.
const (
	LeaseOpen      = "open"
	LeaseCompleted = "completed"
	LeaseAborted   = "aborted"
)

// Lease is the record of one export lease.
type Lease struct {
	ID    string
	State string
	// Fault is the message of an abort.
	Fault string
	// Progress holds the percents of the progress updates, in order.
	Progress []int32
	// URLs are the lease's disk URLs.
	URLs []string
}

// LeaseLog records the export leases of a simulator.
type LeaseLog struct {
	mu     sync.Mutex
	order  []string
	leases map[string]*Lease
}

func (l *LeaseLog) open(id string, urls []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.order = append(l.order, id)
	l.leases[id] = &Lease{ID: id, State: LeaseOpen, URLs: urls}
}

func (l *LeaseLog) end(id, state, fault string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if x := l.leases[id]; x != nil {
		x.State, x.Fault = state, fault
	}
}

func (l *LeaseLog) progress(id string, pct int32) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if x := l.leases[id]; x != nil {
		x.Progress = append(x.Progress, pct)
	}
}

// All returns copies of the records, oldest first.
func (l *LeaseLog) All() []Lease {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]Lease, 0, len(l.order))
	for _, id := range l.order {
		x := *l.leases[id]
		x.Progress = slices.Clone(x.Progress)
		x.URLs = slices.Clone(x.URLs)
		out = append(out, x)
	}
	return out
}

// Last returns the newest record; ok is false when there is none.
func (l *LeaseLog) Last() (Lease, bool) {
	all := l.All()
	if len(all) == 0 {
		return Lease{}, false
	}
	return all[len(all)-1], true
}
