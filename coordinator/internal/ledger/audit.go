package ledger

import (
	"fmt"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// Defaults of the audit trail's retention, used until a RecordAuditEvent
// stamps the leader's (ferry-coordinator --audit-retention and
// --audit-max-events).
const (
	DefaultAuditMaxAge    = 90 * 24 * time.Hour
	DefaultAuditMaxEvents = 100_000
	// AuditSystem is the identity of a job state change that no caller
	// made directly (the scheduler, an agent's result).
	AuditSystem = "system"
	// AuditJobStateChange is the method of a job state change event.
	AuditJobStateChange = "job-state-change"
	auditCollection     = "auditEvents"
)

// DefaultAuditRetention is the retention of a new ledger.
func DefaultAuditRetention() *ledgerv1.AuditRetention {
	return &ledgerv1.AuditRetention{MaxAgeSeconds: int64(DefaultAuditMaxAge / time.Second), MaxEvents: DefaultAuditMaxEvents}
}

// RecordAuditEvent appends ev, named and stamped with now, and prunes the
// trail by retention (nil: the last one recorded).
func (l *Ledger) RecordAuditEvent(ev *ferryv1.AuditEvent, retention *ledgerv1.AuditRetention, now time.Time) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if retention != nil && retention.GetMaxEvents() > 0 && retention.GetMaxAgeSeconds() > 0 {
		l.auditRetention = clone(retention)
	}
	ev = clone(ev)
	return []string{l.appendAudit(ev, now)}
}

// appendAudit names ev, stamps it and appends it; the caller holds the lock.
func (l *Ledger) appendAudit(ev *ferryv1.AuditEvent, now time.Time) string {
	l.auditSeq++
	ev.Name = fmt.Sprintf("%s/%016d", auditCollection, l.auditSeq)
	if ev.Time == nil {
		ev.Time = timestamppb.New(now)
	}
	l.audit = append(l.audit, ev)
	l.pruneAudit(now)
	return ev.GetName()
}

// jobStateChanged records a job state change in the trail; the caller
// holds the lock.
func (l *Ledger) jobStateChanged(prev ferryv1.MigrationJobState, j *ferryv1.MigrationJob, now time.Time) {
	if prev == j.GetState() {
		return
	}
	l.appendAudit(&ferryv1.AuditEvent{
		Identity: AuditSystem, Method: AuditJobStateChange, Resource: j.GetName(), Fields: []string{"state"},
		Result: "OK", PreviousState: prev, State: j.GetState(),
	}, now)
}

// pruneAudit drops events past the retention; the caller holds the lock.
func (l *Ledger) pruneAudit(now time.Time) {
	r := l.auditRetention
	drop := max(len(l.audit)-int(r.GetMaxEvents()), 0)
	oldest := now.Add(-time.Duration(r.GetMaxAgeSeconds()) * time.Second)
	for drop < len(l.audit) && l.audit[drop].GetTime().AsTime().Before(oldest) {
		drop++
	}
	if drop > 0 {
		// Re-slicing drops the oldest without moving the rest; append
		// copies the live part when it next grows the array.
		clear(l.audit[:drop])
		l.audit = l.audit[drop:]
	}
}

// AuditFilter selects audit events; zero fields select all.
type AuditFilter struct {
	// Resource matches an event's resource or one of its created names.
	Resource string
	Identity string
	// Start and End bound the event time: Start <= time < End.
	Start, End time.Time
	// Before, when set, selects only events named before it (paging).
	Before string
}

func (f AuditFilter) match(ev *ferryv1.AuditEvent) bool {
	if f.Resource != "" && ev.GetResource() != f.Resource && !slices.Contains(ev.GetCreated(), f.Resource) {
		return false
	}
	if f.Identity != "" && ev.GetIdentity() != f.Identity {
		return false
	}
	t := ev.GetTime().AsTime()
	if !f.Start.IsZero() && t.Before(f.Start) || !f.End.IsZero() && !t.Before(f.End) {
		return false
	}
	return f.Before == "" || ev.GetName() < f.Before
}

// AuditEvents returns up to limit events that match f, newest first, and
// whether more match.
func (l *Ledger) AuditEvents(f AuditFilter, limit int) ([]*ferryv1.AuditEvent, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	var out []*ferryv1.AuditEvent
	for i := len(l.audit) - 1; i >= 0; i-- {
		if !f.match(l.audit[i]) {
			continue
		}
		if len(out) == limit {
			return out, true
		}
		out = append(out, clone(l.audit[i]))
	}
	return out, false
}

// AuditEventCount is how many events the trail keeps.
func (l *Ledger) AuditEventCount() int {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return len(l.audit)
}
