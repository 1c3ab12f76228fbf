package api

import (
	"testing"

	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// TestPreviewCacheUsage: the preview measures the batch against the free
// space of the migration server's cache_path as its host's agent reports
// it, less what the server's running jobs reserve — the scheduler's
// figure — and not against the agent's own --cache-path disk.
func TestPreviewCacheUsage(t *testing.T) {
	e := newEnv(t, true)
	e.seed()
	cacheUsage := func() *ferryv1.PreviewUsage {
		t.Helper()
		req := jobsReq(2) // 2 × 10 GiB
		resp := must[*ferryv1.PreviewMigrationJobsResponse](t)(e.jobs.PreviewMigrationJobs(ctx(t), &ferryv1.PreviewMigrationJobsRequest{
			Source: req.GetSource(), MigrationServer: req.GetMigrationServer(), Jobs: req.GetJobs()}))
		for _, u := range resp.GetUsages() {
			if u.GetKind() == ferryv1.PreviewResourceKind_PREVIEW_RESOURCE_KIND_CACHE_BYTES && u.GetResource() == "migrationServers/kvm" {
				return u
			}
		}
		t.Fatalf("no cache usage in %v", resp.GetUsages())
		return nil
	}
	// kvm1 reports its --cache-path disk only: the server's cache is not known.
	e.apply(&ledgerv1.Command{Op: &ledgerv1.Command_PutHost{PutHost: &ledgerv1.PutHost{Host: &ferryv1.Host{
		Name: "hosts/kvm1", Cluster: "clusters/c1", Connected: true,
		Facts: &ferryv1.HostFacts{CacheTotalBytes: 1000 * gib, CacheFreeBytes: 1000 * gib}}}}})
	u := cacheUsage()
	want := "host hosts/kvm1 does not report the free space of cache path /var/cache/ferry of migrationServers/kvm yet " +
		"(its agent measures it a heartbeat after it learns the path)"
	if u.GetKnown() || u.GetFits() || u.GetRequested() != 20*gib || u.GetNote() != want {
		t.Fatalf("cache usage %v; want unknown, requested 20 GiB, note %q", u, want)
	}

	// It reports 25 GiB free at /var/cache/ferry; one running job of the
	// server reserves 10 GiB.
	e.apply(&ledgerv1.Command{Op: &ledgerv1.Command_PutHost{PutHost: &ledgerv1.PutHost{Host: &ferryv1.Host{
		Name: "hosts/kvm1", Cluster: "clusters/c1", Connected: true,
		Facts: &ferryv1.HostFacts{CacheTotalBytes: 1000 * gib, CacheFreeBytes: 1000 * gib,
			Storages: []*ferryv1.StorageSpace{{Path: "/var/cache/ferry", TotalBytes: 50 * gib, FreeBytes: 25 * gib}}}}}}})
	e.queuedJob("migrationJobs/running", "10.0.0.9")
	e.startJob("migrationJobs/running", 1)
	u = cacheUsage()
	want = "26843545600 bytes free at cache path /var/cache/ferry on hosts/kvm1 less 10737418240 bytes reserved by the running jobs of " +
		"migrationServers/kvm; jobs that do not fit at once wait in the queue for room"
	if !u.GetKnown() || u.GetFits() || u.GetRequested() != 20*gib || u.GetAvailable() != 15*gib || u.GetNote() != want {
		t.Fatalf("cache usage %v; want requested 20 GiB, available 15 GiB, not fitting, note %q", u, want)
	}
}
