package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

func setBandwidth(requestID, bw string, bps int64) *ledgerv1.Command {
	c := &ledgerv1.Command{Op: &ledgerv1.Command_SetMigrationServerBandwidth{SetMigrationServerBandwidth: &ledgerv1.SetMigrationServerBandwidth{
		Name: "migrationServers/ms1", UpstreamBandwidth: proto.String(bw), UpstreamBitsPerSecond: proto.Int64(bps)}}}
	if requestID != "" {
		c.Request = &ledgerv1.RequestStamp{RequestId: requestID, Method: "SetMigrationServerBandwidth", Target: "migrationServers/ms1"}
	}
	return c
}

func upstream(t *testing.T, f *FSM) string {
	t.Helper()
	ms, ok := f.Ledger().MigrationServer("migrationServers/ms1")
	if !ok {
		t.Fatal("migrationServers/ms1 is gone")
	}
	return ms.GetUpstreamBandwidth()
}

func restored(t *testing.T, f *FSM) *FSM {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	g := New(ledger.New(), nil)
	if err := g.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	return g
}

// TestRepeatedCustomRequest: a stamped command whose request_id was
// applied before answers without applying again, on this replica and on
// one restored from a snapshot (a new leader); for another method or
// target it is refused; after 24 h of command time it applies again.
func TestRepeatedCustomRequest(t *testing.T) {
	f := New(ledger.New(), nil)
	applyAll(t, f, everyCommand())
	names, err := f.ApplyCommand(cmdAt(1000, setBandwidth("b1", "100Mbps", 100_000_000)))
	if err != nil || len(names) != 1 || names[0] != "migrationServers/ms1" {
		t.Fatalf("first: names %v, err %v", names, err)
	}
	if _, err := f.ApplyCommand(cmdAt(1010, setBandwidth("", "200Mbps", 200_000_000))); err != nil {
		t.Fatal(err)
	}
	names, err = f.ApplyCommand(cmdAt(1020, setBandwidth("b1", "100Mbps", 100_000_000)))
	if err != nil || len(names) != 1 || names[0] != "migrationServers/ms1" {
		t.Fatalf("repeat: names %v, err %v", names, err)
	}
	if got := upstream(t, f); got != "200Mbps" {
		t.Fatalf("after the repeat the limit is %s; the repeat rolled back the later change to 200Mbps", got)
	}
	// The record travels in the snapshot: a new leader de-duplicates too.
	g := restored(t, f)
	rec, ok := g.Ledger().RequestRecord("b1", t0.Add(1030*time.Second))
	if !ok || rec.GetMethod() != "SetMigrationServerBandwidth" || len(rec.GetNames()) != 1 || rec.GetNames()[0] != "migrationServers/ms1" ||
		!rec.GetTime().AsTime().Equal(t0.Add(1000*time.Second)) {
		t.Fatalf("restored record of b1 = %v", rec)
	}
	if _, err := g.ApplyCommand(cmdAt(1030, setBandwidth("b1", "100Mbps", 100_000_000))); err != nil {
		t.Fatal(err)
	}
	if got := upstream(t, g); got != "200Mbps" {
		t.Fatalf("on the restored replica the repeat set %s", got)
	}

	// The same request_id for another method, or another target.
	before := f.Ledger().Snapshot()
	enable := &ledgerv1.Command{Op: &ledgerv1.Command_SetMigrationServerEnabled{SetMigrationServerEnabled: &ledgerv1.SetMigrationServerEnabled{
		Name: "migrationServers/ms1", Enabled: false}},
		Request: &ledgerv1.RequestStamp{RequestId: "b1", Method: "DisableMigrationServer", Target: "migrationServers/ms1"}}
	for _, c := range []*ledgerv1.Command{enable, func() *ledgerv1.Command {
		c := setBandwidth("b1", "1Gbps", 1_000_000_000)
		c.Request.Target = "migrationServers/ms9"
		return c
	}()} {
		if err := f.Ledger().Refusal(cmdAt(1040, proto.Clone(c).(*ledgerv1.Command))); !errors.Is(err, ledger.ErrRequestReused) {
			t.Errorf("refusal of %v: %v, want ErrRequestReused", c.GetRequest(), err)
		}
		_, err := f.ApplyCommand(cmdAt(1040, c))
		if !errors.Is(err, ledger.ErrRequestReused) {
			t.Fatalf("reused b1 for %v: err %v, want ErrRequestReused", c.GetRequest(), err)
		}
	}
	if err := f.Ledger().Refusal(cmdAt(1040, enable)); err == nil ||
		err.Error() != `request_id reused: "b1" was already used by SetMigrationServerBandwidth on migrationServers/ms1` {
		t.Fatalf("refusal message: %v", err)
	}
	if !proto.Equal(before, f.Ledger().Snapshot()) {
		t.Fatal("a refused reuse changed the ledger")
	}

	// 24 h of ledger time later the record has expired: the request
	// applies again, and the record is made anew.
	late := t0.Add(1000*time.Second + ledger.RequestTTL)
	c := setBandwidth("b1", "100Mbps", 100_000_000)
	c.Time = timestamppb.New(late)
	if _, err := f.ApplyCommand(c); err != nil {
		t.Fatal(err)
	}
	if got := upstream(t, f); got != "100Mbps" {
		t.Fatalf("after 24 h the request did not apply: %s", got)
	}
	if rec, ok := f.Ledger().RequestRecord("b1", late); !ok || !rec.GetTime().AsTime().Equal(late) {
		t.Fatalf("record of b1 after it applied again = %v", rec)
	}
	// The records made by everyCommand (r-c1, r-jobs, ...) expired with
	// it and were dropped when b1 was recorded again.
	for _, r := range f.Ledger().Snapshot().GetRequests() {
		if r.GetRequestId() != "b1" {
			t.Errorf("expired record %s is still in the ledger", r.GetRequestId())
		}
	}
}

// TestRequestRecordsAreCapped: beyond ledger.MaxRequests records the
// oldest go, down to nine tenths, the same on every replica.
func TestRequestRecordsAreCapped(t *testing.T) {
	a, b := ledger.New(), ledger.New()
	for _, l := range []*ledger.Ledger{a, b} {
		for i := range ledger.MaxRequests + 1 {
			c := &ledgerv1.Command{Time: timestamppb.New(t0.Add(time.Duration(i) * time.Millisecond)),
				Op:      &ledgerv1.Command_PutNode{PutNode: &ledgerv1.PutNode{Node: &ledgerv1.Node{Id: "n1"}}},
				Request: &ledgerv1.RequestStamp{RequestId: fmt.Sprintf("r%05d", i), Method: "AddVoter", Target: "n1"}}
			if _, err := l.Apply(c); err != nil {
				t.Fatal(err)
			}
		}
	}
	recs := a.Snapshot().GetRequests()
	if want := ledger.MaxRequests * 9 / 10; len(recs) != want {
		t.Fatalf("%d records after %d, want %d", len(recs), ledger.MaxRequests+1, want)
	}
	if first := recs[0].GetRequestId(); first != fmt.Sprintf("r%05d", ledger.MaxRequests+1-ledger.MaxRequests*9/10) {
		t.Fatalf("oldest record kept is %s", first)
	}
	if !proto.Equal(a.Snapshot(), b.Snapshot()) {
		t.Fatal("two replicas kept different records")
	}
}

// TestETagCheckedAsTheUpdateApplies: two updates made from the same read
// both carry its etag; the first applies, the second is ErrAborted and
// changes nothing. An empty etag is unconditional.
func TestETagCheckedAsTheUpdateApplies(t *testing.T) {
	f := New(ledger.New(), nil)
	applyAll(t, f, everyCommand())
	read := f.Ledger().Settings()
	if read.GetEtag() == "" || read.GetEtag() != ledger.ETag(read) {
		t.Fatalf("settings etag %q", read.GetEtag())
	}
	put := func(n int32, etag string) *ledgerv1.Command {
		s := proto.Clone(read).(*ferryv1.Settings)
		s.JobParallelism = n
		return cmdAt(500, &ledgerv1.Command{Op: &ledgerv1.Command_PutSettings{PutSettings: &ledgerv1.PutSettings{Settings: s, Etag: etag}}})
	}
	if _, err := f.ApplyCommand(put(7, read.GetEtag())); err != nil {
		t.Fatal(err)
	}
	after := f.Ledger().Settings()
	if after.GetEtag() == read.GetEtag() || after.GetJobParallelism() != 7 {
		t.Fatalf("after the first update: %v", after)
	}
	before := f.Ledger().Snapshot()
	second := put(9, read.GetEtag())
	if err := f.Ledger().Refusal(second); !errors.Is(err, ledger.ErrAborted) {
		t.Fatalf("refusal: %v", err)
	}
	_, err := f.ApplyCommand(second)
	want := fmt.Sprintf("aborted: settings changed since etag %q was read (it is now %q); read it again and retry", read.GetEtag(), after.GetEtag())
	if !errors.Is(err, ledger.ErrAborted) || err.Error() != want {
		t.Fatalf("second update: %v, want %s", err, want)
	}
	if !proto.Equal(before, f.Ledger().Snapshot()) {
		t.Fatal("the aborted update changed the ledger")
	}
	if _, err := f.ApplyCommand(put(9, "")); err != nil || f.Ledger().Settings().GetJobParallelism() != 9 {
		t.Fatalf("unconditional update: %v", err)
	}

	// A network mapping group, the same way.
	g, _ := f.Ledger().NetworkMappingGroup("networkMappingGroups/g1")
	upd := func(display, etag string) *ledgerv1.Command {
		c := proto.Clone(g).(*ferryv1.NetworkMappingGroup)
		c.DisplayName = display
		return cmdAt(600, &ledgerv1.Command{Op: &ledgerv1.Command_PutNetworkMappingGroup{PutNetworkMappingGroup: &ledgerv1.PutNetworkMappingGroup{
			NetworkMappingGroup: c, Update: true, Etag: etag}}})
	}
	if _, err := f.ApplyCommand(upd("first", g.GetEtag())); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ApplyCommand(upd("second", g.GetEtag())); !errors.Is(err, ledger.ErrAborted) {
		t.Fatalf("second group update: %v", err)
	}
	if got, _ := f.Ledger().NetworkMappingGroup("networkMappingGroups/g1"); got.GetDisplayName() != "first" || got.GetEtag() == g.GetEtag() {
		t.Fatalf("group after the race: %v", got)
	}
}
