package api

import (
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// TestMigrationServerUsage: two hours of facts every 30 s, the clock
// injected: each span answers the buckets of its tier within it.
func TestMigrationServerUsage(t *testing.T) {
	e := newEnv(t, true)
	e.seed()
	c := ctx(t)
	base := e.now.Truncate(time.Hour)
	for k := range 240 {
		e.now = base.Add(time.Duration(k) * 30 * time.Second)
		e.apply(&ledgerv1.Command{Op: &ledgerv1.Command_PutHost{PutHost: &ledgerv1.PutHost{Host: &ferryv1.Host{
			Name: "hosts/kvm1", Cluster: "clusters/c1", Connected: true,
			Facts: &ferryv1.HostFacts{CacheTotalBytes: 1000, CacheFreeBytes: 1000 - int64(k)}}}}})
	}
	e.now = base.Add(2 * time.Hour) // the last sample was 30 s ago
	get := func(span ferryv1.UsageSpan) *ferryv1.MigrationServerUsage {
		t.Helper()
		return must[*ferryv1.MigrationServerUsage](t)(e.servers.GetMigrationServerUsage(c,
			&ferryv1.GetMigrationServerUsageRequest{Name: "migrationServers/kvm/usage", Span: span}))
	}
	for _, tt := range []struct {
		span       ferryv1.UsageSpan
		points     int
		resolution time.Duration
		firstUsed  int64
	}{
		{ferryv1.UsageSpan_USAGE_SPAN_15_MINUTES, 30, 15 * time.Second, 210},
		{ferryv1.UsageSpan_USAGE_SPAN_UNSPECIFIED, 120, 15 * time.Second, 120}, // 1 h; the tier keeps no more
		{ferryv1.UsageSpan_USAGE_SPAN_6_HOURS, 120, time.Minute, 0},            // (0+1)/2 in integers
		{ferryv1.UsageSpan_USAGE_SPAN_1_DAY, 24, 5 * time.Minute, 4},           // mean of 0..9
		{ferryv1.UsageSpan_USAGE_SPAN_2_WEEKS, 2, time.Hour, 59},
		{ferryv1.UsageSpan_USAGE_SPAN_1_YEAR, 1, 6 * time.Hour, 119},
	} {
		u := get(tt.span)
		if len(u.GetPoints()) != tt.points || u.GetResolution().AsDuration() != tt.resolution || u.GetPoints()[0].GetUsedBytes() != tt.firstUsed ||
			!u.GetEndTime().AsTime().Equal(e.now) {
			t.Errorf("%v: %d points at %v, first %v; want %d at %v, first used %d", tt.span, len(u.GetPoints()), u.GetResolution().AsDuration(),
				u.GetPoints()[0], tt.points, tt.resolution, tt.firstUsed)
		}
	}
	if p := get(ferryv1.UsageSpan_USAGE_SPAN_15_MINUTES).GetPoints()[29]; p.GetUsedBytes() != 239 || p.GetUsedPercent() != 23.9 || p.GetTotalBytes() != 1000 {
		t.Errorf("the newest point = %v", p)
	}
	_, err := e.servers.GetMigrationServerUsage(c, &ferryv1.GetMigrationServerUsageRequest{Name: "migrationServers/kvm"})
	wantCode(t, err, codes.InvalidArgument, "name: ")
	_, err = e.servers.GetMigrationServerUsage(c, &ferryv1.GetMigrationServerUsageRequest{Name: "migrationServers/nope/usage"})
	wantCode(t, err, codes.NotFound, "name: ")
	_, err = e.servers.GetMigrationServerUsage(c, &ferryv1.GetMigrationServerUsageRequest{Name: "migrationServers/kvm/usage", Span: 42})
	wantCode(t, err, codes.InvalidArgument, "span: ")
	// Deleting the server forgets its history.
	must[*ferryv1.DeleteMigrationServerResponse](t)(e.servers.DeleteMigrationServer(c, &ferryv1.DeleteMigrationServerRequest{Name: "migrationServers/kvm"}))
	if pts := e.ledger.CacheUsage("migrationServers/kvm", 0, time.Time{}); len(pts) != 0 {
		t.Errorf("%d points left after the server was deleted", len(pts))
	}
}
