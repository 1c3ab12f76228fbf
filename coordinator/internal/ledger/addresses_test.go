package ledger

import (
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// TestAddressIndex: who holds an address follows the jobs' states and
// deletions and the reservations, survives a snapshot, and every change
// that may free an address is counted.
func TestAddressIndex(t *testing.T) {
	l := New()
	apply := func(cmd *ledgerv1.Command) {
		t.Helper()
		cmd.Time = timestamppb.New(time.Unix(1700000000, 0))
		if _, err := l.Apply(cmd); err != nil {
			t.Fatalf("apply %v: %v", cmd, err)
		}
	}
	job := func(name, ip string) *ferryv1.MigrationJob {
		return &ferryv1.MigrationJob{Name: name, Source: "sources/s", MigrationServer: "migrationServers/m", SourceVm: name,
			Target: &ferryv1.TargetVm{VmName: name, Nics: []*ferryv1.TargetNic{{L3Network: "l3Networks/n", Ip: ip, Mac: "52:54:00:00:00:01"}}}}
	}
	for _, cmd := range []*ledgerv1.Command{
		{Op: &ledgerv1.Command_PutCluster{PutCluster: &ledgerv1.PutCluster{Cluster: &ferryv1.Cluster{Name: "clusters/c"}}}},
		{Op: &ledgerv1.Command_PutL3Network{PutL3Network: &ledgerv1.PutL3Network{L3Network: &ferryv1.L3Network{Name: "l3Networks/n", Cluster: "clusters/c"}}}},
		{Op: &ledgerv1.Command_PutSource{PutSource: &ledgerv1.PutSource{Source: &ferryv1.Source{Name: "sources/s"}}}},
		{Op: &ledgerv1.Command_PutMigrationServer{PutMigrationServer: &ledgerv1.PutMigrationServer{MigrationServer: &ferryv1.MigrationServer{Name: "migrationServers/m"}}}},
		{Op: &ledgerv1.Command_CreateMigrationJobs{CreateMigrationJobs: &ledgerv1.CreateMigrationJobs{Jobs: []*ferryv1.MigrationJob{
			job("migrationJobs/a", "10.0.0.2"), job("migrationJobs/b", "10.0.0.3"), job("migrationJobs/c", "10.0.0.4")}}}},
	} {
		apply(cmd)
	}
	freed := l.AddressesFreed()
	apply(&ledgerv1.Command{Op: &ledgerv1.Command_CancelMigrationJob{CancelMigrationJob: &ledgerv1.CancelMigrationJob{Name: "migrationJobs/b"}}})
	if l.AddressesFreed() == freed {
		t.Error("a cancelled job's address was not counted as freed")
	}
	if h, ok := l.AddressHolder("l3Networks/n", "10.0.0.3"); ok {
		t.Errorf("10.0.0.3 is held by %s after its job was cancelled", h)
	}
	// A new job may take the cancelled job's address.
	apply(&ledgerv1.Command{Op: &ledgerv1.Command_CreateMigrationJobs{CreateMigrationJobs: &ledgerv1.CreateMigrationJobs{Jobs: []*ferryv1.MigrationJob{
		job("migrationJobs/d", "10.0.0.3")}}}})
	if h, _ := l.AddressHolder("l3Networks/n", "10.0.0.3"); h != "migrationJobs/d" {
		t.Errorf("10.0.0.3 held by %q, want migrationJobs/d", h)
	}
	// ...and the cancelled one can no longer be restarted.
	if err := l.Refusal(&ledgerv1.Command{Op: &ledgerv1.Command_RestartMigrationJob{RestartMigrationJob: &ledgerv1.RestartMigrationJob{Name: "migrationJobs/b"}}}); err == nil {
		t.Error("restarting migrationJobs/b, whose address migrationJobs/d now holds, was not refused")
	}
	apply(&ledgerv1.Command{Op: &ledgerv1.Command_DeleteMigrationJob{DeleteMigrationJob: &ledgerv1.DeleteResource{Name: "migrationJobs/b"}}})
	want := map[string]string{"10.0.0.2": "migrationJobs/a", "10.0.0.3": "migrationJobs/d", "10.0.0.4": "migrationJobs/c"}
	if got := l.UsedAddresses("l3Networks/n"); !maps.Equal(got, want) {
		t.Errorf("used = %v, want %v", got, want)
	}
	restored := New()
	restored.Restore(l.Snapshot())
	if got := restored.UsedAddresses("l3Networks/n"); !maps.Equal(got, want) {
		t.Errorf("after a restore: used = %v, want %v", got, want)
	}
}

// TestAddressesFreedSince: the ledger lists the addresses each network may
// have freed after a given count, and says when it no longer knows: after
// a snapshot is restored, a network deleted, or more frees than it keeps.
func TestAddressesFreedSince(t *testing.T) {
	l := New()
	apply := func(cmd *ledgerv1.Command) {
		t.Helper()
		cmd.Time = timestamppb.New(time.Unix(1700000000, 0))
		if _, err := l.Apply(cmd); err != nil {
			t.Fatalf("apply %v: %v", cmd, err)
		}
	}
	job := func(name, network, ip string) *ferryv1.MigrationJob {
		return &ferryv1.MigrationJob{Name: name, Source: "sources/s", MigrationServer: "migrationServers/m", SourceVm: name,
			Target: &ferryv1.TargetVm{VmName: name, Nics: []*ferryv1.TargetNic{{L3Network: network, Ip: ip, Mac: "52:54:00:00:00:01"}}}}
	}
	for _, cmd := range []*ledgerv1.Command{
		{Op: &ledgerv1.Command_PutCluster{PutCluster: &ledgerv1.PutCluster{Cluster: &ferryv1.Cluster{Name: "clusters/c"}}}},
		{Op: &ledgerv1.Command_PutL3Network{PutL3Network: &ledgerv1.PutL3Network{L3Network: &ferryv1.L3Network{Name: "l3Networks/n", Cluster: "clusters/c"}}}},
		{Op: &ledgerv1.Command_PutL3Network{PutL3Network: &ledgerv1.PutL3Network{L3Network: &ferryv1.L3Network{Name: "l3Networks/m", Cluster: "clusters/c"}}}},
		{Op: &ledgerv1.Command_PutL3Network{PutL3Network: &ledgerv1.PutL3Network{L3Network: &ferryv1.L3Network{Name: "l3Networks/x", Cluster: "clusters/c"}}}},
		{Op: &ledgerv1.Command_PutSource{PutSource: &ledgerv1.PutSource{Source: &ferryv1.Source{Name: "sources/s"}}}},
		{Op: &ledgerv1.Command_PutMigrationServer{PutMigrationServer: &ledgerv1.PutMigrationServer{MigrationServer: &ferryv1.MigrationServer{Name: "migrationServers/m"}}}},
		{Op: &ledgerv1.Command_CreateMigrationJobs{CreateMigrationJobs: &ledgerv1.CreateMigrationJobs{Jobs: []*ferryv1.MigrationJob{
			job("migrationJobs/a", "l3Networks/n", "10.0.0.2"), job("migrationJobs/b", "l3Networks/n", "10.0.0.3"), job("migrationJobs/c", "l3Networks/m", "10.0.0.2")}}}},
	} {
		apply(cmd)
	}
	since := l.AddressesFreed()
	if got, ok := l.AddressesFreedSince("l3Networks/n", since); !ok || len(got) != 0 {
		t.Errorf("freed since now = %v, %v; want none, known", got, ok)
	}
	apply(&ledgerv1.Command{Op: &ledgerv1.Command_CancelMigrationJob{CancelMigrationJob: &ledgerv1.CancelMigrationJob{Name: "migrationJobs/b"}}})
	mid := l.AddressesFreed()
	apply(&ledgerv1.Command{Op: &ledgerv1.Command_CancelMigrationJob{CancelMigrationJob: &ledgerv1.CancelMigrationJob{Name: "migrationJobs/a"}}})
	if got, ok := l.AddressesFreedSince("l3Networks/n", since); !ok || !slices.Equal(got, []string{"10.0.0.3", "10.0.0.2"}) {
		t.Errorf("freed on n since before the cancels = %v, %v; want [10.0.0.3 10.0.0.2], known", got, ok)
	}
	if got, ok := l.AddressesFreedSince("l3Networks/n", mid); !ok || !slices.Equal(got, []string{"10.0.0.2"}) {
		t.Errorf("freed on n since the first cancel = %v, %v; want [10.0.0.2], known", got, ok)
	}
	if got, ok := l.AddressesFreedSince("l3Networks/m", since); !ok || len(got) != 0 {
		t.Errorf("freed on m = %v, %v; want none, known", got, ok)
	}
	apply(&ledgerv1.Command{Op: &ledgerv1.Command_DeleteL3Network{DeleteL3Network: &ledgerv1.DeleteResource{Name: "l3Networks/x"}}})
	if _, ok := l.AddressesFreedSince("l3Networks/m", since); ok {
		t.Error("the ledger claims to know what was freed across a deleted network")
	}
	after := l.AddressesFreed()
	for i := range freedLogCap + 1 {
		l.freed++
		l.logFreed("l3Networks/m", fmt.Sprintf("10.1.%d.%d", i/256, i%256))
	}
	if got, ok := l.AddressesFreedSince("l3Networks/m", after); ok {
		t.Errorf("the ledger claims to know %d addresses freed, more than it keeps", len(got))
	}
	if got, ok := l.AddressesFreedSince("l3Networks/m", l.AddressesFreed()); !ok || len(got) != 0 {
		t.Errorf("freed on m since now = %v, %v; want none, known", got, ok)
	}
	l.Restore(l.Snapshot())
	if _, ok := l.AddressesFreedSince("l3Networks/n", after); ok {
		t.Error("the ledger claims to know what was freed across a restore")
	}
}
