// Package watch fans job events out to watchers and keeps live progress,
// which stays in the leader's memory and out of the Raft log.
package watch

import (
	"sync"

	"google.golang.org/protobuf/proto"

	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// Event is one change seen by watchers. Job is shared by every receiver
// (and, for a change, with the ledger, whose values are never changed in
// place): a receiver reads it and must not change it.
type Event struct {
	Type ferryv1.WatchEventType
	Job  *ferryv1.MigrationJob
}

// Lookup finds a job in the ledger.
type Lookup func(name string) (*ferryv1.MigrationJob, bool)

type live struct {
	epoch int64
	disks []*ferryv1.DiskProgress
}

type subscriber struct {
	ch     chan Event
	closed bool
}

// Hub is safe for concurrent use.
type Hub struct {
	lookup Lookup
	mu     sync.Mutex
	subs   map[*subscriber]struct{}
	live   map[string]live
}

// New returns a hub that reads jobs through lookup.
func New(lookup Lookup) *Hub {
	return &Hub{lookup: lookup, subs: map[*subscriber]struct{}{}, live: map[string]live{}}
}

// JobChanged is the ledger's observer: it must not block. ev.Job is the
// ledger's own value, which subscribers share and only read.
func (h *Hub) JobChanged(ev ledger.JobEvent) {
	typ := ferryv1.WatchEventType_WATCH_EVENT_TYPE_CHANGED
	if ev.Deleted {
		typ = ferryv1.WatchEventType_WATCH_EVENT_TYPE_DELETED
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if ev.Deleted || ledger.Terminal(ev.Job.GetState()) {
		delete(h.live, ev.Job.GetName())
	}
	h.publish(Event{Type: typ, Job: ev.Job}, true)
}

// Progress records live progress of a job's current assignment and tells
// watchers. Reports of another epoch than the ledger's are dropped.
func (h *Hub) Progress(name string, epoch int64, disks []*ferryv1.DiskProgress) bool {
	j, ok := h.lookup(name)
	if !ok || j.GetEpoch() != epoch || j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.live[name] = live{epoch: epoch, disks: disks}
	j.Disks = cloneDisks(disks)
	h.publish(Event{Type: ferryv1.WatchEventType_WATCH_EVENT_TYPE_PROGRESS, Job: j}, false)
	return true
}

// Overlay returns j with the live progress of its current assignment, if
// this node holds any; j itself is changed and returned.
func (h *Hub) Overlay(j *ferryv1.MigrationJob) *ferryv1.MigrationJob {
	h.mu.Lock()
	defer h.mu.Unlock()
	if l, ok := h.live[j.GetName()]; ok && l.epoch == j.GetEpoch() &&
		j.GetState() == ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING {
		j.Disks = cloneDisks(l.disks)
	}
	return j
}

// Reset forgets all live progress, e.g. when this node loses leadership.
func (h *Hub) Reset() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.live = map[string]live{}
}

// Subscribe returns a channel of events and a function to stop. When a
// subscriber falls more than buffer events behind on state changes its
// channel is closed, and the watcher should start again; progress events
// are simply dropped for a slow subscriber.
func (h *Hub) Subscribe(buffer int) (<-chan Event, func()) {
	s := &subscriber{ch: make(chan Event, buffer)}
	h.mu.Lock()
	h.subs[s] = struct{}{}
	h.mu.Unlock()
	return s.ch, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.drop(s)
	}
}

// publish sends ev to every subscriber, the job shared, not copied: a job
// change reached the scheduler and the session manager as two copies of
// the job, which neither changes (the scheduler only wakes up). The caller
// holds h.mu.
func (h *Hub) publish(ev Event, mustDeliver bool) {
	for s := range h.subs {
		select {
		case s.ch <- ev:
		default:
			if mustDeliver {
				h.drop(s)
			}
		}
	}
}

func (h *Hub) drop(s *subscriber) {
	if _, ok := h.subs[s]; ok {
		delete(h.subs, s)
		close(s.ch)
	}
}

func cloneDisks(in []*ferryv1.DiskProgress) []*ferryv1.DiskProgress {
	out := make([]*ferryv1.DiskProgress, len(in))
	for i, d := range in {
		out[i] = proto.Clone(d).(*ferryv1.DiskProgress)
	}
	return out
}
