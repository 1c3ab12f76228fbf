package ledger

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// BenchmarkUsageHistoryYear100 fills the cache-usage history of 100
// migration servers as a year of facts would (every tier full: samples
// every 6 h for the year, then denser toward now, down to every 15 s in
// the last hour) and reports what it costs: bytes per server in a
// snapshot (what Raft stores and sends) and in the heap. Issue 15's
// benchmark: "memory of a year of history for 100 servers".
func BenchmarkUsageHistoryYear100(b *testing.B) {
	const servers = 100
	for range b.N {
		l := New()
		now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
		for i := range servers {
			l.servers[fmt.Sprintf("migrationServers/s%d", i)] = &ferryv1.MigrationServer{Name: fmt.Sprintf("migrationServers/s%d", i), Host: fmt.Sprintf("hosts/h%d", i)}
		}
		steps := []struct{ from, step time.Duration }{
			{366 * 24 * time.Hour, 6 * time.Hour}, {56 * 24 * time.Hour, time.Hour}, {24 * time.Hour, 5 * time.Minute},
			{6 * time.Hour, time.Minute}, {time.Hour, 15 * time.Second},
		}
		var runtimeBefore runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&runtimeBefore)
		samples := 0
		for k, s := range steps {
			end := time.Duration(0)
			if k+1 < len(steps) {
				end = steps[k+1].from
			}
			for at := now.Add(-s.from); at.Before(now.Add(-end)); at = at.Add(s.step) {
				for i := range servers {
					used := int64(i+1)<<30 + at.Unix()%(1<<20)
					_, err := l.Apply(&ledgerv1.Command{Time: timestamppb.New(at), Op: &ledgerv1.Command_PutHost{PutHost: &ledgerv1.PutHost{Host: &ferryv1.Host{
						Name: fmt.Sprintf("hosts/h%d", i), Facts: &ferryv1.HostFacts{CacheTotalBytes: 4 << 40, CacheFreeBytes: 4<<40 - used}}}}})
					if err != nil {
						b.Fatal(err)
					}
					samples++
				}
			}
		}
		runtime.GC()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		snap := l.Snapshot()
		var histBytes int
		for _, h := range snap.GetCacheUsage() {
			histBytes += proto.Size(h)
		}
		buckets := 0
		for _, t := range snap.GetCacheUsage()[0].GetTiers() {
			buckets += len(t.GetStart())
		}
		b.ReportMetric(float64(histBytes)/servers, "snapshot-bytes/server")
		b.ReportMetric(float64(int64(after.HeapAlloc)-int64(runtimeBefore.HeapAlloc))/servers, "heap-bytes/server")
		b.ReportMetric(float64(buckets), "buckets/server")
		b.Logf("%d samples; history of %d servers: %d bytes in a snapshot (%.1f KiB/server), %d buckets/server, heap %+d bytes in all (hosts and servers included)",
			samples, servers, histBytes, float64(histBytes)/servers/1024, buckets, int64(after.HeapAlloc)-int64(runtimeBefore.HeapAlloc))
	}
}
