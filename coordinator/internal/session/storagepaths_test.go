package session

import (
	"slices"
	"testing"
	"time"

	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// TestStoragePathsNameTheServersCachePath: an agent is told to measure
// every local and NFS storage path and the cache_path of the migration
// servers on its own host — in its welcome, and in heartbeats once a
// server is created — but not another host's servers' cache paths.
func TestStoragePathsNameTheServersCachePath(t *testing.T) {
	f := newFixture(t, Config{HeartbeatInterval: 50 * time.Millisecond}, true)
	f.apply(&ledgerv1.Command{Op: &ledgerv1.Command_PutCluster{PutCluster: &ledgerv1.PutCluster{Cluster: &ferryv1.Cluster{Name: "clusters/c1"}}}})
	f.apply(&ledgerv1.Command{Op: &ledgerv1.Command_PutPrimaryStorage{PutPrimaryStorage: &ledgerv1.PutPrimaryStorage{PrimaryStorage: &ferryv1.PrimaryStorage{
		Name: "primaryStorages/nfs", Cluster: "clusters/c1", Type: ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_NFS, Path: "/mnt/nfs"}}}})
	server := func(name, host, path string) {
		f.apply(&ledgerv1.Command{Op: &ledgerv1.Command_PutMigrationServer{PutMigrationServer: &ledgerv1.PutMigrationServer{
			MigrationServer: &ferryv1.MigrationServer{Name: name, Host: host, Type: ferryv1.Platform_PLATFORM_KVM, CachePath: path}}}})
	}
	server("migrationServers/mine", "h1", "/srv/cache-h1") // host named without prefix
	server("migrationServers/other", "hosts/h2", "/srv/cache-h2")
	a := f.connect(hello("h1"))
	got := a.next().GetWelcome().GetStoragePaths()
	slices.Sort(got)
	if want := []string{"/mnt/nfs", "/srv/cache-h1"}; !slices.Equal(got, want) {
		t.Fatalf("welcome storage paths %q, want %q", got, want)
	}
	server("migrationServers/mine-2", "hosts/h1", "/data/cache")
	deadline := time.After(5 * time.Second)
	for {
		select {
		case msg := <-a.in:
			got := msg.GetHeartbeat().GetStoragePaths()
			slices.Sort(got)
			if slices.Equal(got, []string{"/data/cache", "/mnt/nfs", "/srv/cache-h1"}) {
				return
			}
		case <-deadline:
			t.Fatal("no heartbeat named the new server's cache path within 5s")
		}
	}
}
