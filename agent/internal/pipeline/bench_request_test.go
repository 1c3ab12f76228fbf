package pipeline

import (
	"fmt"
	"testing"

	"github.com/ferry-v2v/ferry/pkg/nbd"
	"github.com/ferry-v2v/ferry/pkg/testenv"
)

// BenchmarkRequestSize measures what request size and depth suit QEMU's
// NBD server: Ferry's CONVERTING copy of the 4 GiB source (1 GiB of data)
// with requests of 128 KiB to 2 MiB and 8 to 64 of them in flight on the
// connection, beside nbdcopy, in interleaved rounds (FERRY_BENCH_ROUNDS,
// default 2). It prints the median time and the CPU seconds and minor
// page faults per GiB of the qemu-nbd serving the export.
func BenchmarkRequestSize(b *testing.B) {
	requireQemu(b)
	testenv.LookPath(b, "nbdcopy")
	rounds := benchRounds(2)
	small, _ := benchSources(b)
	sock, pid := serveReadOnlyPID(b, small, "qcow2")
	e := export{sock, pid}
	type setting struct{ size, depth int }
	settings := []setting{
		{128 << 10, 16}, {256 << 10, 16}, {512 << 10, 16}, {2 << 20, 16},
		{256 << 10, 8}, {256 << 10, 32}, {256 << 10, 64},
	}
	b.ResetTimer()
	for range b.N {
		runs := []*benchRun{{name: "nbdcopy", run: func(bool) benchRound { return benchNBDCopy(b, e, nbdURI(sock), 4<<30) }}}
		for _, s := range settings {
			opts := nbd.Options{MaxRequest: s.size, MaxInFlight: s.depth}
			runs = append(runs, &benchRun{
				name: fmt.Sprintf("ferry %4d KiB x %2d", s.size>>10, s.depth),
				run: func(first bool) benchRound {
					r, _ := benchFerry(b, small, e, 4<<30, first, func() *nbd.Client { return dialNBD(b, sock, opts) })
					return r
				},
			})
		}
		interleave(runs, rounds)
		benchf("%d rounds, interleaved; load average before the report: %s", rounds, loadAverage())
		base, _ := runs[0].seconds()
		for _, r := range runs {
			med, least := r.seconds()
			cpu, _ := r.medianMin(func(x benchRound) float64 { return x.srcCPU })
			faults, _ := r.medianMin(func(x benchRound) float64 { return float64(x.srcFaults) })
			benchf("%-20s median %5.2f s, min %5.2f s, speed/nbdcopy %.2f; source QEMU %.2f CPU-s/GiB, %6.0f faults/GiB",
				r.name, med, least, base/med, cpu, faults)
		}
	}
}
