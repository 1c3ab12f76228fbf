package pipeline

import (
	"cmp"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/pkg/nbd"
	"github.com/ferry-v2v/ferry/pkg/testenv"
)

// BenchmarkSourceVM copies the backup export of a running VM (TCG, no
// OS) whose root disk holds 512 MiB of random data, as the agent does
// (pull-mode backup, NBD over a unix socket), with Ferry's default
// requests, with Ferry's former 2 MiB requests, and with nbdcopy, in
// interleaved rounds (FERRY_BENCH_ROUNDS, default 3). It prints the CPU
// the VM's QEMU spent serving each copy per GiB of data, its idle CPU
// (measured before) taken off, and its minor page faults per GiB.
func BenchmarkSourceVM(b *testing.B) {
	requireQemu(b)
	testenv.LookPath(b, "nbdcopy")
	lv := testenv.RequireLibvirt(b)
	rounds := benchRounds(3)
	vm := testenv.NewTestVM(b, lv, testenv.VMOptions{RandomBytes: 512 << 20})
	// Where QEMU (user libvirt-qemu) may create a socket, as kvm.DefaultSocketDir.
	sock := filepath.Join("/var/lib/libvirt/qemu", "ferry-bench-"+vm.Name+".sock")
	b.Cleanup(func() { os.Remove(sock) })
	xml := filepath.Join(vm.Dir, "backup.xml")
	backup := fmt.Sprintf(`<domainbackup mode='pull'><server transport='unix' socket='%s'/><disks>
<disk name='vda' backup='yes' type='file'><scratch file='%s'/></disk><disk name='vdb' backup='no'/></disks></domainbackup>`,
		sock, filepath.Join(vm.Dir, "scratch.qcow2"))
	if err := os.WriteFile(xml, []byte(backup), 0o644); err != nil {
		b.Fatal(err)
	}
	lv.Virsh(b, "backup-begin", vm.Name, xml)
	b.Cleanup(func() { _, _ = lv.TryVirsh("domjobabort", vm.Name) })
	raw, err := os.ReadFile("/run/libvirt/qemu/" + vm.Name + ".pid")
	if err != nil {
		b.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(raw)))
	e := export{sock, pid}
	size := dialNBD(b, sock, nbd.Options{ExportName: "vda"}).Size()
	data := float64(testDiskData(vm.Disks[0])) / (1 << 30)
	idle := idleCPU(strconv.Itoa(pid), 3*time.Second)
	ferry := func(opts nbd.Options) func(bool) benchRound {
		opts.ExportName = "vda"
		return func(bool) benchRound {
			r, _ := benchFerry(b, "", e, size, false, func() *nbd.Client { return dialNBD(b, sock, opts) })
			return r
		}
	}
	b.ResetTimer()
	for range b.N {
		runs := []*benchRun{
			{name: "ferry (256 KiB)", run: ferry(nbd.Options{})},
			{name: "ferry with 2 MiB requests", run: ferry(nbd.Options{MaxRequest: 2 << 20})},
			{name: "nbdcopy", run: func(bool) benchRound { return benchNBDCopy(b, e, "nbd+unix:///vda?socket="+sock, size) }},
		}
		interleave(runs, rounds)
		benchf("%d rounds, interleaved, %.2f GiB of data; VM QEMU idle %.3f CPU-s/s; load average before the report: %s",
			rounds, data, idle, loadAverage())
		per := func(r *benchRun) (float64, float64) {
			cpu, _ := r.medianMin(func(x benchRound) float64 { return (x.srcCPU - idle*x.d.Seconds()) / data })
			faults, _ := r.medianMin(func(x benchRound) float64 { return float64(x.srcFaults) / data })
			return cpu, faults
		}
		for _, r := range runs {
			med, least := r.seconds()
			cpu, faults := per(r)
			benchf("%-26s median %5.2f s (%4.0f MB/s of data), min %5.2f s; VM QEMU %.2f CPU-s/GiB, %7.0f faults/GiB",
				r.name, med, data*(1<<30)/1e6/med, least, cpu, faults)
		}
		f, _ := per(runs[0])
		n, _ := per(runs[2])
		fm, _ := runs[0].seconds()
		nm, _ := runs[2].seconds()
		benchf("speed ferry/nbdcopy %.2f (goal >= 1.0); VM QEMU CPU per GiB ferry/nbdcopy %.2f (goal <= 1.0)", nm/fm, f/n)
		b.ReportMetric(nm/fm, "ferry/nbdcopy")
		b.ReportMetric(f/n, "vm-cpu-ferry/nbdcopy")
	}
}

// testDiskData is the bytes of data a test VM's disk holds: its extents
// and its random run, which may overlap.
func testDiskData(d testenv.TestDisk) int64 {
	spans := []span{{testenv.RandomOffset, testenv.RandomOffset + int64(len(d.Random))}}
	for _, e := range d.Extents {
		spans = append(spans, span{e.Offset, e.Offset + e.Length})
	}
	slices.SortFunc(spans, func(x, y span) int { return cmp.Compare(x.off, y.off) })
	var n, end int64
	for _, s := range spans {
		if s.off > end {
			end = s.off
		}
		if s.end > end {
			n += s.end - end
			end = s.end
		}
	}
	return n
}

// idleCPU is the CPU seconds per second pid spends over d.
func idleCPU(pid string, d time.Duration) float64 {
	c0 := cpuSeconds(pid)
	time.Sleep(d)
	return (cpuSeconds(pid) - c0) / d.Seconds()
}
