package bench

import (
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// reportSizes reports BenchmarkCreateMigrationJobs50's figures: per
// ledger size the p50, p99, max and the minimum of the block medians; the
// growth from the small ledger to the large one as the median of the
// per-block ratios (the verdict: each block's two sizes ran under the
// same load), beside the ratio of p50s and of the minimum block medians;
// and the verdicts against issue 11's goals, with the load average before
// and after.
func reportSizes(b *testing.B, small, large []time.Duration, loadBefore, loadAfter string) {
	all := append(slices.Clone(small), large...)
	_, p99, maxD, mean := latencySummary(all)
	s50, s99, _, _ := latencySummary(small)
	l50, l99, _, _ := latencySummary(large)
	sMin, lMin, ratio := blockMedians(small, large, createBlocks)
	growth := 100 * (float64(lMin)/float64(max(sMin, 1)) - 1)
	growthBlocks := 100 * (ratio - 1)
	b.ReportMetric(ms(s50), "p50-ms")
	b.ReportMetric(ms(p99), "p99-ms")
	b.ReportMetric(ms(l50), "p50-10k-ms")
	b.ReportMetric(ms(l99), "p99-10k-ms")
	b.ReportMetric(ms(maxD), "max-ms")
	b.ReportMetric(growthBlocks, "growth-%")
	b.ReportMetric(growth, "growth-min-%")
	b.ReportMetric(float64(mean.Nanoseconds()), "ns/op")
	verdict, flat := "MET", "MET"
	if p99 >= 50*time.Millisecond {
		verdict = "MISSED"
	}
	if growthBlocks > 20 || growthBlocks < -20 {
		flat = "MISSED"
	}
	minNote := ""
	if (growth > 20 || growth < -20) != (flat == "MISSED") {
		minNote = " (disagrees: the minima may come from blocks under different load)"
	}
	b.Logf("CreateMigrationJobs(50 VMs) on 3-node clusters, %d interleaved rounds, load average %s before, %s after:\n"+
		"  100 jobs in the ledger: p50 %.1f ms, p99 %.1f ms, min of %d block medians %.1f ms\n"+
		"  10,000 jobs in the ledger: p50 %.1f ms, p99 %.1f ms, min of %d block medians %.1f ms\n"+
		"  all calls: p99 %.1f ms, max %.1f ms, mean %.1f ms; goal p99 < 50 ms: %s\n"+
		"  10,000 against 100: median of block ratios %+.0f %%, p50 %+.0f %%, min of block medians %+.0f %%%s; goal flat within 20 %% (block ratios): %s",
		createRounds, loadBefore, loadAfter,
		ms(s50), ms(s99), createBlocks, ms(sMin),
		ms(l50), ms(l99), createBlocks, ms(lMin),
		ms(p99), ms(maxD), ms(mean), verdict, growthBlocks, 100*(float64(l50)/float64(max(s50, 1))-1), growth, minNote, flat)
}

// blockMedians splits two equally long series of samples, taken in
// alternating rounds, into blocks of consecutive rounds and returns the
// minimum of each series' block medians and the median of the blocks'
// ratios b/a: figures of the two under the same load that a burst of
// load elsewhere on the machine moves least.
func blockMedians(a, b []time.Duration, blocks int) (minA, minB time.Duration, ratio float64) {
	n := min(len(a), len(b))
	size := max(n/blocks, 1)
	var ratios []float64
	for i := 0; i+size <= n; i += size {
		ma, _, _, _ := latencySummary(a[i : i+size])
		mb, _, _, _ := latencySummary(b[i : i+size])
		if minA == 0 || ma < minA {
			minA = ma
		}
		if minB == 0 || mb < minB {
			minB = mb
		}
		ratios = append(ratios, float64(mb)/float64(max(ma, 1)))
	}
	if len(ratios) == 0 {
		return minA, minB, 1
	}
	slices.Sort(ratios)
	return minA, minB, ratios[len(ratios)/2]
}

// loadAverage is the machine's 1, 5 and 15-minute load average, as
// /proc/loadavg gives them ("?" where there is none).
func loadAverage() string {
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(raw))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
