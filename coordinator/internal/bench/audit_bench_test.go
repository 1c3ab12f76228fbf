package bench

import (
	"context"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/coordinator/internal/testcluster"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// BenchmarkCreateMigrationJobs50Audit times the 50-VM CreateMigrationJobs
// of BenchmarkCreateMigrationJobs50 on two three-node clusters side by
// side, one recording an audit event for every mutating call (the
// default: a second Raft entry after the call's own) and one without,
// alternating calls between them (and which goes first) so both see the
// same load on the machine; calls go to a follower, as in the
// authorization benchmark. It reports both p50 and p99 and how much
// slower the audited p99 is. No goal is set: it measures the audit
// trail's price, one more replicated entry per write.
func BenchmarkCreateMigrationJobs50Audit(b *testing.B) {
	type side struct {
		name    string
		api     *apiClients
		samples []time.Duration
	}
	ctx := testcluster.Ctx(b, 10*time.Minute)
	var sides []*side
	for _, off := range []bool{false, true} {
		c := startClusterWith(b, 3, func(c *testcluster.Cluster) { c.AuditOff = off })
		leader := c.Leader(10 * time.Second)
		api := newAPI(c.Dial(c.Followers()[0].Addr()))
		seedJobReferences(b, api)
		if err := registerHost(ctx, c.DialAgent(leader.Addr(), "bench-host"), "bench-host"); err != nil {
			b.Fatal(err)
		}
		if err := createServer(ctx, api, "migrationServers/bench", "hosts/bench-host"); err != nil {
			b.Fatal(err)
		}
		if _, err := api.servers.DisableMigrationServer(ctx, &ferryv1.DisableMigrationServerRequest{Name: "migrationServers/bench"}); err != nil {
			b.Fatal(err)
		}
		name := "with audit"
		if off {
			name = "without audit"
		}
		sides = append(sides, &side{name: name, api: api, samples: make([]time.Duration, 0, createCalls)})
	}
	call := func(ctx context.Context, s *side, i int) {
		req := jobsRequest("migrationServers/bench", i*50, 50)
		start := time.Now()
		resp, err := s.api.jobs.CreateMigrationJobs(ctx, req)
		s.samples = append(s.samples, time.Since(start))
		if err != nil || len(resp.GetJobs()) != 50 {
			b.Fatalf("%s, call %d: %d jobs, %v", s.name, i, len(resp.GetJobs()), err)
		}
	}
	b.ResetTimer()
	for i := range createCalls {
		first, second := sides[i%2], sides[1-i%2]
		call(ctx, first, i)
		call(ctx, second, i)
	}
	b.StopTimer()
	on50, on99, _, onMean := latencySummary(sides[0].samples)
	off50, off99, _, offMean := latencySummary(sides[1].samples)
	b.ReportMetric(ms(on99), "p99-ms")
	b.ReportMetric(ms(off99), "p99-noaudit-ms")
	b.ReportMetric(ms(on50), "p50-ms")
	b.ReportMetric(ms(off50), "p50-noaudit-ms")
	b.ReportMetric(float64(onMean.Nanoseconds()), "ns/op")
	slower := 100 * (float64(on99) - float64(off99)) / float64(off99)
	b.ReportMetric(slower, "p99-slower-%")
	b.Logf("CreateMigrationJobs(50 VMs) x%d through a follower of a 3-node cluster, interleaved: with audit p50 %.1f ms, p99 %.1f ms, mean %.1f ms; "+
		"without p50 %.1f ms, p99 %.1f ms, mean %.1f ms; p99 %+.1f %%",
		createCalls, ms(on50), ms(on99), ms(onMean), ms(off50), ms(off99), ms(offMean), slower)
}
