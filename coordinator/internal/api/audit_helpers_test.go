package api

import (
	"fmt"
	"testing"

	"google.golang.org/protobuf/proto"

	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
)

// withoutAudit splits a ledger snapshot into the rest of the state and
// the audit events: a refused call changes nothing but the trail, where it
// leaves one event (and one Raft entry) of its own.
func withoutAudit(s *ledgerv1.Snapshot) (*ledgerv1.Snapshot, uint64) {
	s = proto.Clone(s).(*ledgerv1.Snapshot)
	seq := s.GetAuditSequence()
	s.AuditEvents, s.AuditSequence, s.AuditRetention = nil, 0, nil
	return s, seq
}

// checkOnlyAudited wants the ledger unchanged but for the audit events
// refused calls added, none of them OK, and the applied index moved by
// exactly those events.
func checkOnlyAudited(t *testing.T, name string, before, after *ledgerv1.Snapshot, appliedBefore, appliedAfter uint64) {
	t.Helper()
	b, bseq := withoutAudit(before)
	a, aseq := withoutAudit(after)
	if !proto.Equal(a, b) {
		t.Errorf("%s: a refused request changed the ledger", name)
	}
	if appliedAfter-appliedBefore != aseq-bseq {
		t.Errorf("%s: applied index moved from %d to %d with %d audit events recorded; want it moved by the audit events alone",
			name, appliedBefore, appliedAfter, aseq-bseq)
	}
	for _, ev := range after.GetAuditEvents() {
		if ev.GetName() > auditName(bseq) && ev.GetResult() == "OK" {
			t.Errorf("%s: refused calls recorded %s of %s as OK", name, ev.GetName(), ev.GetMethod())
		}
	}
}

func auditName(seq uint64) string { return fmt.Sprintf("auditEvents/%016d", seq) }

// CheckOnlyAudited is checkOnlyAudited for the api_test package.
var CheckOnlyAudited = checkOnlyAudited
