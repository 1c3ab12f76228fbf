package server_test

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferry-v2v/ferry/coordinator/internal/testcluster"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// TestCacheUsageHistorySurvives: a migration server's cache-usage
// history, sampled as its host's facts enter the ledger, is served the
// same after the leader is killed and after every node restarts (from
// snapshots: TrailingLogs is small). The samples carry injected times
// (an hour of them, every 30 s), so the test waits for no clock.
func TestCacheUsageHistorySurvives(t *testing.T) {
	c := testcluster.New(t)
	c.TrailingLogs = 4
	for i := 0; i < 3; i++ {
		c.AddNode()
	}
	c.WaitMembers(3, 10*time.Second)
	leader := c.Leader(5 * time.Second)
	ctx := testcluster.Ctx(t, 30*time.Second)
	if err := createCluster(t, c.Dial(leader.Addr()), "c1"); err != nil {
		t.Fatal(err)
	}
	const gib = 1 << 30
	host := func(at time.Time, used int64) *ledgerv1.Command {
		return &ledgerv1.Command{Time: timestamppb.New(at), Op: &ledgerv1.Command_PutHost{PutHost: &ledgerv1.PutHost{Host: &ferryv1.Host{
			Name: "hosts/h1", Cluster: "clusters/c1", Connected: true,
			Facts: &ferryv1.HostFacts{Cpus: 2, CacheTotalBytes: 100 * gib, CacheFreeBytes: 100*gib - used}}}}}
	}
	base := time.Now().Truncate(5 * time.Minute).Add(-time.Hour)
	// The host registers without cache facts, so the server's creation
	// (at the real time, after every injected sample) samples nothing.
	first := host(base.Add(-time.Minute), 0)
	first.GetPutHost().GetHost().Facts = &ferryv1.HostFacts{Cpus: 2}
	if _, err := leader.Server.Node().Propose(ctx, first); err != nil {
		t.Fatal(err)
	}
	_, err := ferryv1.NewMigrationServerServiceClient(c.Dial(leader.Addr())).CreateMigrationServer(ctx, &ferryv1.CreateMigrationServerRequest{
		MigrationServer: &ferryv1.MigrationServer{Name: "migrationServers/ms1", Host: "hosts/h1", Type: ferryv1.Platform_PLATFORM_KVM, CachePath: "/var/cache/ferry"}})
	if err != nil {
		t.Fatal(err)
	}
	var batch []*ledgerv1.Command
	for k := range 120 {
		batch = append(batch, host(base.Add(time.Duration(k)*30*time.Second), int64(k)*gib/2))
	}
	if _, err := leader.Server.Node().Propose(ctx, &ledgerv1.Command{Op: &ledgerv1.Command_Batch{Batch: &ledgerv1.Batch{Commands: batch}}}); err != nil {
		t.Fatal(err)
	}

	usage := func(n *testcluster.Node, span ferryv1.UsageSpan) []*ferryv1.CacheUsagePoint {
		t.Helper()
		var u *ferryv1.MigrationServerUsage
		testcluster.Eventually(t, 10*time.Second, n.Name+" answers the usage", func() bool {
			u, err = ferryv1.NewMigrationServerServiceClient(c.Dial(n.Addr())).GetMigrationServerUsage(ctx,
				&ferryv1.GetMigrationServerUsageRequest{Name: "migrationServers/ms1/usage", Span: span})
			return err == nil && len(u.GetPoints()) > 0
		})
		return u.GetPoints()
	}
	sixHours, oneDay := usage(leader, ferryv1.UsageSpan_USAGE_SPAN_6_HOURS), usage(leader, ferryv1.UsageSpan_USAGE_SPAN_1_DAY)
	// One-minute buckets of two samples (k/2 GiB used, k = 2j and 2j+1)
	// and five-minute ones of ten.
	if len(sixHours) != 60 || len(oneDay) != 12 {
		t.Fatalf("6 h: %d points, 1 day: %d; want 60 and 12", len(sixHours), len(oneDay))
	}
	for j, p := range sixHours {
		if p.GetSamples() != 2 || p.GetUsedBytes() != (4*int64(j)+1)*gib/4 || !p.GetTime().AsTime().Equal(base.Add(time.Duration(j)*time.Minute)) {
			t.Fatalf("6 h point %d = %v", j, p)
		}
	}
	if p := oneDay[3]; p.GetSamples() != 10 || p.GetUsedBytes() != (30+39)*gib/4 || p.GetUsedPercent() != 17.25 {
		t.Fatalf("1 day point 3 = %v", p)
	}

	c.Kill(leader)
	next := c.Leader(10 * time.Second)
	if got := usage(next, ferryv1.UsageSpan_USAGE_SPAN_6_HOURS); !equalPoints(got, sixHours) {
		t.Fatalf("after the leader was killed, %s answers %d points, want the %d from before", next.Name, len(got), len(sixHours))
	}
	for _, n := range c.Nodes() {
		c.Kill(n)
	}
	for _, n := range c.Nodes() {
		c.Restart(n)
	}
	after := c.Leader(15 * time.Second)
	for _, span := range []ferryv1.UsageSpan{ferryv1.UsageSpan_USAGE_SPAN_6_HOURS, ferryv1.UsageSpan_USAGE_SPAN_1_DAY} {
		want := map[ferryv1.UsageSpan][]*ferryv1.CacheUsagePoint{ferryv1.UsageSpan_USAGE_SPAN_6_HOURS: sixHours, ferryv1.UsageSpan_USAGE_SPAN_1_DAY: oneDay}[span]
		if got := usage(after, span); !equalPoints(got, want) {
			t.Fatalf("after a full restart, %s answers %d points for %v, want the %d from before", after.Name, len(got), span, len(want))
		}
	}
}

func equalPoints(a, b []*ferryv1.CacheUsagePoint) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !proto.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}
