package bench

import (
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// reportSizes reports BenchmarkCreateMigrationJobs50's figures: per
// ledger size the p50, p99, max and the minimum of the block medians;
// the growth from the small ledger to the large one, both as the ratio of
// those minima and as the median of the per-block ratios; and the
// verdicts against issue 11's goals, with the load average before and
// after.
func reportSizes(b *testing.B, small, large *ledgerSide, loadBefore, loadAfter string) {
	all := append(slices.Clone(small.samples), large.samples...)
	_, p99, maxD, mean := latencySummary(all)
	s50, s99, _, _ := latencySummary(small.samples)
	l50, l99, _, _ := latencySummary(large.samples)
	sMin, lMin, ratio := blockMedians(small.samples, large.samples, createBlocks)
	growth := 100 * (float64(lMin)/float64(max(sMin, 1)) - 1)
	growthBlocks := 100 * (ratio - 1)
	b.ReportMetric(ms(s50), "p50-ms")
	b.ReportMetric(ms(p99), "p99-ms")
	b.ReportMetric(ms(l50), "p50-10k-ms")
	b.ReportMetric(ms(l99), "p99-10k-ms")
	b.ReportMetric(ms(maxD), "max-ms")
	b.ReportMetric(growth, "growth-%")
	b.ReportMetric(float64(mean.Nanoseconds()), "ns/op")
	verdict, flat := "MET", "MET"
	if p99 >= 50*time.Millisecond {
		verdict = "MISSED"
	}
	if growth > 20 || growth < -20 || growthBlocks > 20 || growthBlocks < -20 {
		flat = "MISSED"
	}
	b.Logf("CreateMigrationJobs(50 VMs) on 3-node clusters, %d interleaved rounds, load average %s before, %s after:\n"+
		"  %s in the ledger: p50 %.1f ms, p99 %.1f ms, min of %d block medians %.1f ms\n"+
		"  %s in the ledger: p50 %.1f ms, p99 %.1f ms, min of %d block medians %.1f ms\n"+
		"  all calls: p99 %.1f ms, max %.1f ms, mean %.1f ms; goal p99 < 50 ms: %s\n"+
		"  10,000 against 100: min of block medians %+.0f %%, median of block ratios %+.0f %%; goal flat within 20 %% (both): %s",
		createRounds, loadBefore, loadAfter,
		small.name, ms(s50), ms(s99), createBlocks, ms(sMin),
		large.name, ms(l50), ms(l99), createBlocks, ms(lMin),
		ms(p99), ms(maxD), ms(mean), verdict, growth, growthBlocks, flat)
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
