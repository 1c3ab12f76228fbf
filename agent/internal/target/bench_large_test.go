package target

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"
)

// benchSourceLarge is the whole-job benchmark's source grown to 64 GiB:
// the same 1 GiB of data followed by 60 GiB of hole, made once and kept.
func benchSourceLarge(b *testing.B) string {
	b.Helper()
	small := benchSource(b)
	dir := filepath.Dir(small)
	large, ready := filepath.Join(dir, "source-64g.qcow2"), filepath.Join(dir, "ready-64g")
	if _, err := os.Stat(ready); err == nil {
		return large
	}
	testenv.Run(b, "cp", small, large)
	testenv.Run(b, "qemu-img", "resize", "-q", "-f", "qcow2", large, "64G")
	if err := os.WriteFile(ready, nil, 0o600); err != nil {
		b.Fatal(err)
	}
	return large
}

// BenchmarkWholeJobVirtualSize times the whole job (CONVERTING with the
// upload beside it, the rest of UPLOADING, verify) of the 4 GiB disk
// holding 1 GiB and of a 64 GiB disk holding the same data, in turns for
// FERRY_BENCH_ROUNDS rounds (default 3), onto local qcow2 volumes. A job
// should scale with the data, not the virtual size: goal 64 GiB / 4 GiB
// <= 1.2.
func BenchmarkWholeJobVirtualSize(b *testing.B) {
	requireTools(b, "qemu-img", "qemu-nbd", "nbdinfo")
	rounds := 3
	if n, err := strconv.Atoi(os.Getenv("FERRY_BENCH_ROUNDS")); err == nil && n > 0 {
		rounds = n
	}
	small, smallPID := serveSource(b, benchSource(b))
	large, largePID := serveSource(b, benchSourceLarge(b))
	load0 := loadAverage()
	b.ResetTimer()
	for range b.N {
		type contender struct {
			name string
			src  Endpoint
			pid  string
			size int64
			secs []float64
			cpu  []float64
		}
		cs := []*contender{
			{name: "4 GiB", src: small, pid: smallPID, size: benchSize},
			{name: "64 GiB", src: large, pid: largePID, size: 64 << 30},
		}
		for r := range rounds {
			for k := range cs {
				c := cs[(k+r)%len(cs)]
				cpu0 := cpuSeconds("self") + childrenCPU() + cpuSeconds(c.pid)
				d, res := benchJobOf(b, c.src, c.size, &noDomain{Driver: NewDriver("", Options{})})
				c.cpu = append(c.cpu, cpuSeconds("self")+childrenCPU()+cpuSeconds(c.pid)-cpu0)
				c.secs = append(c.secs, d.Seconds())
				u := phaseOf(res, ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_UPLOADING)
				if u.GetBytes() != benchData || !res.GetDisks()[0].GetVerified() {
					b.Fatalf("%s: %d bytes uploaded (want %d), verified %v", c.name, u.GetBytes(), benchData, res.GetDisks()[0].GetVerified())
				}
			}
		}
		b.Logf("load average before: %s; after: %s", load0, loadAverage())
		for _, c := range cs {
			b.Logf("whole job %-6s median %6.2f s  min %6.2f s  (%s), CPU %.2f s (median)", c.name, median(c.secs), slices.Min(c.secs), list(c.secs), median(c.cpu))
		}
		paired := make([]float64, rounds)
		for i := range rounds {
			paired[i] = cs[1].secs[i] / cs[0].secs[i]
		}
		ratio := median(cs[1].secs) / median(cs[0].secs)
		b.Logf("whole job 64 GiB / 4 GiB: medians %.2f, minima %.2f, median of rounds %.2f (goal <= 1.2); CPU %.2f",
			ratio, slices.Min(cs[1].secs)/slices.Min(cs[0].secs), median(paired), median(cs[1].cpu)/median(cs[0].cpu))
		b.ReportMetric(ratio, "64GiB/4GiB")
	}
}
