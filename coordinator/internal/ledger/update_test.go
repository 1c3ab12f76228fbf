package ledger

import (
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// TestUpdateResourceAppliesOnlyItsPaths: an update changes the fields it
// names on the resource as stored when it applies, so what changed in
// between (an address taken by a job created after the API read the
// network) is kept, and is checked against again.
func TestUpdateResourceAppliesOnlyItsPaths(t *testing.T) {
	l := New()
	now := time.Unix(1700000000, 0)
	apply := func(cmd *ledgerv1.Command) error {
		t.Helper()
		cmd.Time = timestamppb.New(now)
		_, err := l.Apply(cmd)
		return err
	}
	net := &ferryv1.L3Network{Name: "l3Networks/n", Cluster: "clusters/c", Bridge: "br0", IpRangeStart: "10.0.0.2", IpRangeEnd: "10.0.0.9", PrefixLength: 24}
	for _, cmd := range []*ledgerv1.Command{
		{Op: &ledgerv1.Command_PutCluster{PutCluster: &ledgerv1.PutCluster{Cluster: &ferryv1.Cluster{Name: "clusters/c"}}}},
		{Op: &ledgerv1.Command_PutL3Network{PutL3Network: &ledgerv1.PutL3Network{L3Network: net}}},
		{Op: &ledgerv1.Command_PutSource{PutSource: &ledgerv1.PutSource{Source: &ferryv1.Source{Name: "sources/s"}}}},
		{Op: &ledgerv1.Command_PutMigrationServer{PutMigrationServer: &ledgerv1.PutMigrationServer{MigrationServer: &ferryv1.MigrationServer{Name: "migrationServers/m"}}}},
	} {
		if err := apply(cmd); err != nil {
			t.Fatal(err)
		}
	}
	read, _ := l.L3Network("l3Networks/n") // what the API read
	etag := ETag(read)
	// A job takes 10.0.0.8 after that read.
	if err := apply(&ledgerv1.Command{Op: &ledgerv1.Command_CreateMigrationJobs{CreateMigrationJobs: &ledgerv1.CreateMigrationJobs{Jobs: []*ferryv1.MigrationJob{{
		Name: "migrationJobs/a", Source: "sources/s", MigrationServer: "migrationServers/m", SourceVm: "a",
		Target: &ferryv1.TargetVm{VmName: "a", Nics: []*ferryv1.TargetNic{{L3Network: "l3Networks/n", Ip: "10.0.0.8"}}}}}}}}); err != nil {
		t.Fatal(err)
	}
	shrink := read
	shrink.IpRangeEnd, shrink.DisplayName = "10.0.0.5", "small"
	err := apply(&ledgerv1.Command{Op: &ledgerv1.Command_UpdateResource{UpdateResource: &ledgerv1.UpdateResource{
		Resource: &ledgerv1.UpdateResource_L3Network{L3Network: shrink}, Paths: []string{"ip_range_end", "display_name"}}}})
	if !errors.Is(err, ErrFailedPrecondition) {
		t.Fatalf("shrinking past a held address: %v", err)
	}
	freed := l.AddressesFreed()
	err = apply(&ledgerv1.Command{Op: &ledgerv1.Command_UpdateResource{UpdateResource: &ledgerv1.UpdateResource{
		Resource: &ledgerv1.UpdateResource_L3Network{L3Network: shrink}, Paths: []string{"display_name"}, Etag: etag}}})
	if err != nil {
		t.Fatalf("an etag read before a job took an address is still current (jobs are not part of the network): %v", err)
	}
	got, _ := l.L3Network("l3Networks/n")
	if got.GetDisplayName() != "small" || got.GetIpRangeEnd() != "10.0.0.9" || got.GetUpdateTime() == nil || l.AddressesFreed() == freed {
		t.Fatalf("network = %v, freed %d → %d", got, freed, l.AddressesFreed())
	}
	err = apply(&ledgerv1.Command{Op: &ledgerv1.Command_UpdateResource{UpdateResource: &ledgerv1.UpdateResource{
		Resource: &ledgerv1.UpdateResource_L3Network{L3Network: shrink}, Paths: []string{"display_name"}, Etag: etag}}})
	if !errors.Is(err, ErrAborted) {
		t.Fatalf("a stale etag: %v", err)
	}
	err = apply(&ledgerv1.Command{Op: &ledgerv1.Command_UpdateResource{UpdateResource: &ledgerv1.UpdateResource{
		Resource: &ledgerv1.UpdateResource_MigrationJob{MigrationJob: &ferryv1.MigrationJob{Name: "migrationJobs/a", State: ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED}},
		Paths:    []string{"state"}}}})
	if !errors.Is(err, ErrFailedPrecondition) {
		t.Fatalf("a job's state through an update: %v", err)
	}
}
