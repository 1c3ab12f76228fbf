package ledger

import (
	"testing"
	"time"

	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// TestAuditRetention: events are named in order, the trail keeps at most
// max_events and none older than max_age before the latest command's
// time, filters and pages newest first, and survives a snapshot.
func TestAuditRetention(t *testing.T) {
	l := New()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ret := &ledgerv1.AuditRetention{MaxAgeSeconds: 3600, MaxEvents: 3}
	record := func(at time.Time, resource string) string {
		return l.RecordAuditEvent(&ferryv1.AuditEvent{Identity: "ferry://operator/a", Method: "/m", Resource: resource, Result: "OK"}, ret, at)[0]
	}
	first := record(t0, "clusters/a")
	if first != "auditEvents/0000000000000001" {
		t.Fatalf("first event named %s", first)
	}
	record(t0.Add(time.Minute), "clusters/b")
	record(t0.Add(2*time.Minute), "clusters/a")
	record(t0.Add(3*time.Minute), "clusters/b")
	if n := l.AuditEventCount(); n != 3 {
		t.Fatalf("%d events kept, want max_events 3", n)
	}
	evs, more := l.AuditEvents(AuditFilter{}, 10)
	if more || len(evs) != 3 || evs[0].GetName() != "auditEvents/0000000000000004" || evs[2].GetName() != "auditEvents/0000000000000002" {
		t.Fatalf("events newest first: %v (more %v)", evs, more)
	}
	evs, more = l.AuditEvents(AuditFilter{Resource: "clusters/b"}, 1)
	if !more || len(evs) != 1 || evs[0].GetName() != "auditEvents/0000000000000004" {
		t.Fatalf("first page of clusters/b: %v (more %v)", evs, more)
	}
	evs, more = l.AuditEvents(AuditFilter{Resource: "clusters/b", Before: evs[0].GetName()}, 1)
	if more || len(evs) != 1 || evs[0].GetName() != "auditEvents/0000000000000002" {
		t.Fatalf("second page of clusters/b: %v (more %v)", evs, more)
	}
	evs, _ = l.AuditEvents(AuditFilter{Start: t0.Add(2 * time.Minute), End: t0.Add(3 * time.Minute)}, 10)
	if len(evs) != 1 || evs[0].GetName() != "auditEvents/0000000000000003" {
		t.Fatalf("events in [2m, 3m): %v", evs)
	}
	// Two hours later every older event is past max_age.
	record(t0.Add(2*time.Hour), "clusters/c")
	if evs, _ := l.AuditEvents(AuditFilter{}, 10); len(evs) != 1 || evs[0].GetResource() != "clusters/c" {
		t.Fatalf("after max_age: %v", evs)
	}
	restored := New()
	restored.Restore(l.Snapshot())
	if got := restored.RecordAuditEvent(&ferryv1.AuditEvent{Method: "/m"}, nil, t0.Add(2*time.Hour)); got[0] != "auditEvents/0000000000000006" {
		t.Fatalf("after a restore the next event is %s, want number 6", got[0])
	}
}
