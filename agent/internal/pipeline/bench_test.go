package pipeline

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
	"github.com/ferry-v2v/ferry/pkg/nbd"
	"github.com/ferry-v2v/ferry/pkg/testenv"
)

// The benchmark's source: 4 GiB virtual holding 1 GiB, a 256 MiB run of
// one byte and 768 MiB of random bytes in three runs; the 64 GiB disk
// holds the same data followed by 60 GiB of hole.
var benchFills = []fill{
	{0, 256 * mib, 0x5a},
	{1 << 30, 256 * mib, 0},
	{2 << 30, 256 * mib, 0},
	{3 << 30, 256 * mib, 0},
}

// benchSources generates the 4 GiB and 64 GiB qcow2 sources once and
// keeps them under the temporary directory for later runs.
func benchSources(b *testing.B) (small, large string) {
	b.Helper()
	dir := filepath.Join(os.TempDir(), "ferry-bench-converting-v1")
	small, large = filepath.Join(dir, "source-4g.qcow2"), filepath.Join(dir, "source-64g.qcow2")
	ready := filepath.Join(dir, "ready")
	if _, err := os.Stat(ready); err == nil {
		return small, large
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	raw := filepath.Join(dir, "source.raw")
	writeSparse(b, raw, 4<<30, 7, benchFills...)
	testenv.Run(b, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, small)
	testenv.Run(b, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, large)
	testenv.Run(b, "qemu-img", "resize", "-q", "-f", "qcow2", large, "64G")
	if err := os.Remove(raw); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(ready, nil, 0o600); err != nil {
		b.Fatal(err)
	}
	b.Logf("generated the sources in %s in %v", dir, time.Since(start).Round(time.Millisecond))
	return small, large
}

// benchRun is one contender of BenchmarkConverting and its rounds.
type benchRun struct {
	name  string
	run   func(first bool) benchRound
	other string // the contender its speed is compared with, when any
	runs  []benchRound
}

// benchRound is one timed copy: its time, the CPU seconds of every
// process involved, and the CPU seconds and minor page faults of the
// source's QEMU (the qemu-nbd serving the export, standing for a running
// VM's QEMU, which serves its backup export with the same NBD server).
type benchRound struct {
	d         time.Duration
	cpu       float64
	srcCPU    float64
	srcFaults int64
	own, sink float64 // the copier's own CPU seconds, and its target's
}

// medianMin returns the median and the least of f over the rounds.
func (r *benchRun) medianMin(f func(benchRound) float64) (float64, float64) {
	v := make([]float64, len(r.runs))
	for i, x := range r.runs {
		v[i] = f(x)
	}
	sort.Float64s(v)
	n := len(v)
	if n == 0 {
		return 0, 0
	}
	med := v[n/2]
	if n%2 == 0 {
		med = (v[n/2-1] + v[n/2]) / 2
	}
	return med, v[0]
}

func (r *benchRun) seconds() (float64, float64) {
	return r.medianMin(func(x benchRound) float64 { return x.d.Seconds() })
}

// benchRounds is FERRY_BENCH_ROUNDS, or def.
func benchRounds(def int) int {
	if n, err := strconv.Atoi(os.Getenv("FERRY_BENCH_ROUNDS")); err == nil && n > 0 {
		return n
	}
	return def
}

// interleave runs every contender once a round, each round starting one
// further along and every other round in reverse order, so that the load
// of a shared machine, and whatever a run leaves to the next, fall on all
// alike.
func interleave(runs []*benchRun, rounds int) {
	n := len(runs)
	for r := range rounds {
		for k := range n {
			if r%2 == 1 {
				k = n - 1 - k
			}
			run := runs[(k+r)%n]
			run.runs = append(run.runs, run.run(r == 0))
		}
	}
}

// BenchmarkConverting times the CONVERTING copy of one NBD export holding
// 1 GiB of data into a zstd-compressed qcow2 cache, side by side with
// nbdcopy into the same kind of target and qemu-img convert, locally and
// through one sshd (Ferry over its SSH connection as the agent reads a
// backup export, nbdcopy through `ssh -L`), then Ferry again on a 64 GiB
// disk holding the same data. Every time ends with the target durable.
// The contenders take turns, FERRY_BENCH_ROUNDS times (default 3); the
// medians and minima are compared, and the CPU the source's QEMU spends
// per GiB of data.
func BenchmarkConverting(b *testing.B) {
	requireQemu(b)
	testenv.LookPath(b, "nbdcopy")
	testenv.LookPath(b, "ssh")
	rounds := benchRounds(3)
	small, large := benchSources(b)
	smallSrc, smallPID := serveReadOnlyPID(b, small, "qcow2")
	largeSrc, largePID := serveReadOnlyPID(b, large, "qcow2")
	small4 := export{smallSrc, smallPID}
	tun := startTunnel(b, smallSrc)
	b.ResetTimer()
	for range b.N {
		var peak memPeak
		ferry := func(src string, e export, size int64, dial func() *nbd.Client) func(bool) benchRound {
			return func(first bool) benchRound {
				r, p := benchFerry(b, src, e, size, first, dial)
				peak = peak.max(p)
				return r
			}
		}
		local := func(sock string) func() *nbd.Client {
			return func() *nbd.Client { return dialNBD(b, sock, nbd.Options{}) }
		}
		runs := []*benchRun{
			{name: "ferry 4 GiB", run: ferry(small, small4, 4<<30, local(smallSrc)), other: "nbdcopy 4 GiB"},
			{name: "nbdcopy 4 GiB", run: func(bool) benchRound { return benchNBDCopy(b, small4, nbdURI(smallSrc), 4<<30) }},
			{name: "qemu-img convert 4 GiB", run: func(bool) benchRound { return benchQemuImg(b, small4) }},
			{name: "ferry 4 GiB over SSH", run: ferry(small, small4, 4<<30, tun.dialFerry), other: "nbdcopy 4 GiB over ssh -L"},
			{name: "nbdcopy 4 GiB over ssh -L", run: func(bool) benchRound { return benchNBDCopy(b, small4, nbdURI(tun.local), 4<<30) }},
			{name: "ferry 64 GiB", run: ferry(large, export{largeSrc, largePID}, 64<<30, local(largeSrc)), other: "ferry 4 GiB"},
		}
		interleave(runs, rounds)
		reportConverting(b, runs, peak)
	}
}

// reportConverting prints a line per contender and the ratios, and
// reports the main figures as metrics.
func reportConverting(b *testing.B, runs []*benchRun, peak memPeak) {
	by := map[string]*benchRun{}
	for _, r := range runs {
		by[r.name] = r
	}
	benchf("%d rounds, interleaved; load average before the report: %s", len(runs[0].runs), loadAverage())
	for _, r := range runs {
		med, least := r.seconds()
		cpuGiB, _ := r.medianMin(func(x benchRound) float64 { return x.srcCPU })
		faults, _ := r.medianMin(func(x benchRound) float64 { return float64(x.srcFaults) })
		cpu, _ := r.medianMin(func(x benchRound) float64 { return x.cpu })
		benchf("%-26s median %5.2f s (%4.0f MB/s of data), min %5.2f s; source QEMU %.2f CPU-s/GiB, %6.0f faults/GiB; all CPU %.2f s",
			r.name, med, float64(1<<30)/1e6/med, least, cpuGiB, faults, cpu)
	}
	ratio := func(num, den string) (float64, float64) {
		nm, nl := by[num].seconds()
		dm, dl := by[den].seconds()
		return nm / dm, nl / dl
	}
	// paired is the median over rounds of the ratio within each round,
	// whose runs ran next to each other under the same load.
	paired := func(num, den string) float64 {
		r := &benchRun{}
		for i := range min(len(by[num].runs), len(by[den].runs)) {
			r.runs = append(r.runs, benchRound{d: time.Duration(float64(time.Second) *
				by[num].runs[i].d.Seconds() / by[den].runs[i].d.Seconds())})
		}
		med, _ := r.seconds()
		return med
	}
	cpuRatio := func(a, c string) float64 {
		x, _ := by[a].medianMin(func(r benchRound) float64 { return r.srcCPU })
		y, _ := by[c].medianMin(func(r benchRound) float64 { return r.srcCPU })
		return x / y
	}
	lm, ll := ratio("nbdcopy 4 GiB", "ferry 4 GiB")
	qm, ql := ratio("qemu-img convert 4 GiB", "ferry 4 GiB")
	sm, sl := ratio("nbdcopy 4 GiB over ssh -L", "ferry 4 GiB over SSH")
	gm, gl := ratio("ferry 64 GiB", "ferry 4 GiB")
	benchf("speed ferry/nbdcopy local: medians %.2f, minima %.2f, median of rounds %.2f (goal >= 1.0)",
		lm, ll, paired("nbdcopy 4 GiB", "ferry 4 GiB"))
	benchf("speed ferry/qemu-img convert: medians %.2f, minima %.2f, median of rounds %.2f",
		qm, ql, paired("qemu-img convert 4 GiB", "ferry 4 GiB"))
	benchf("speed ferry/nbdcopy through sshd: medians %.2f, minima %.2f, median of rounds %.2f (goal >= 1.0)",
		sm, sl, paired("nbdcopy 4 GiB over ssh -L", "ferry 4 GiB over SSH"))
	benchf("source QEMU CPU per GiB ferry/nbdcopy: local %.2f, through sshd %.2f (goal <= 1.0)",
		cpuRatio("ferry 4 GiB", "nbdcopy 4 GiB"), cpuRatio("ferry 4 GiB over SSH", "nbdcopy 4 GiB over ssh -L"))
	benchf("time 64 GiB / 4 GiB: median %.2f, min %.2f (goal < 1.2)", gm, gl)
	benchf("peak during Ferry's copies: %s", peak)
	b.ReportMetric(lm, "ferry/nbdcopy")
	b.ReportMetric(sm, "ssh-ferry/nbdcopy")
	b.ReportMetric(qm, "ferry/qemu-img")
	b.ReportMetric(cpuRatio("ferry 4 GiB", "nbdcopy 4 GiB"), "src-cpu-ferry/nbdcopy")
	b.ReportMetric(float64(peak.rssDelta)/float64(mib), "rss-delta-MiB")
}

// benchf prints a line of a benchmark's report on the standard output:
// the testing package keeps only ten lines of a benchmark's log.
func benchf(format string, args ...any) {
	fmt.Printf("    "+format+"\n", args...)
}

// loadAverage is the first three fields of /proc/loadavg.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:min(3, len(f))], " ")
}

// export is a read-only source export and the pid of its qemu-nbd.
type export struct {
	sock string
	pid  int
}

// dialNBD connects to an NBD socket with opts, closed when the benchmark
// or test ends.
func dialNBD(tb testing.TB, sock string, opts nbd.Options) *nbd.Client {
	tb.Helper()
	c, err := nbd.Dial(context.Background(), "unix", sock, opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// benchFerry copies the export, read through the client dial returns, into
// a new compressed cache image with a checkpoint, as the agent does, and
// closes it. With verify, the image is compared with the source
// afterwards. Without src (a running VM's export), neither the image nor
// the amount of data is checked.
func benchFerry(b *testing.B, src string, e export, size int64, verify bool, dial func() *nbd.Client) (benchRound, memPeak) {
	b.Helper()
	dir := b.TempDir()
	runtime.GC()
	pid := strconv.Itoa(e.pid)
	self0, src0 := cpuSeconds("self"), sampleSource(pid)
	stop := sampleMemory(filepath.Join(dir, "vda.pid"))
	start := time.Now()
	img, err := cache.Open(context.Background(), dir, "vda", size, true, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	cp, err := LoadCheckpoint(img.CheckpointPath(), size, DefaultChunkSize)
	if err != nil {
		b.Fatal(err)
	}
	c := dial()
	defer c.Close() // the export takes a few connections at a time
	st, err := Copy(context.Background(), NBDSource{Client: c}, img, Options{Checkpoint: cp})
	if err != nil {
		b.Fatal(err)
	}
	tpid, _ := os.ReadFile(filepath.Join(dir, "vda.pid"))
	target := cpuSeconds(strings.TrimSpace(string(tpid))) // before it exits; misses the last flush
	if err := img.Close(); err != nil {
		b.Fatal(err)
	}
	r := src0.since(time.Since(start), pid)
	peak := stop()
	r.own, r.sink = cpuSeconds("self")-self0, target
	r.cpu += r.own + target
	if src != "" && st.DataBytes != 1<<30 {
		b.Fatalf("copied %d data bytes, want 1 GiB", st.DataBytes)
	}
	if verify {
		testenv.Run(b, "qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", src, img.Path())
	}
	if err := os.RemoveAll(dir); err != nil {
		b.Fatal(err)
	}
	return r, peak
}

// procSample is what /proc says of the source's QEMU at one moment.
type procSample struct {
	cpu    float64
	faults int64
}

func sampleSource(pid string) procSample {
	return procSample{cpu: cpuSeconds(pid), faults: minorFaults(pid)}
}

// since makes the round of a copy that took d, from the source's figures
// at its start; its cpu holds the source's share so far.
func (s procSample) since(d time.Duration, pid string) benchRound {
	cpu := cpuSeconds(pid) - s.cpu
	return benchRound{d: d, cpu: cpu, srcCPU: cpu, srcFaults: minorFaults(pid) - s.faults}
}

// nbdURI is the NBD URI of the default export on a unix socket.
func nbdURI(sock string) string { return "nbd+unix:///?socket=" + sock }

// benchNBDCopy runs nbdcopy from src, the URI of the export or of a tunnel
// to it, into
// a zstd qcow2 made as the cache's are and served by qemu-nbd's compress
// filter, and stops that server. CPU counts the three processes.
func benchNBDCopy(b *testing.B, e export, src string, size int64) benchRound {
	b.Helper()
	dir := b.TempDir()
	target, tsock := filepath.Join(dir, "nbdcopy.qcow2"), filepath.Join(dir, "t.sock")
	pid := strconv.Itoa(e.pid)
	src0 := sampleSource(pid)
	start := time.Now()
	testenv.Run(b, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "compression_type=zstd,lazy_refcounts=on",
		target, fmt.Sprint(size))
	srv := exec.Command("qemu-nbd", "-t", "-k", tsock, "--image-opts",
		"driver=compress,file.driver=qcow2,file.file.driver=file,file.file.filename="+target)
	if err := srv.Start(); err != nil {
		b.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for exec.Command("nbdinfo", "--size", nbdURI(tsock)).Run() != nil {
		if time.Now().After(deadline) {
			b.Fatal("the nbdcopy target did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	nbdcopy := exec.Command("nbdcopy", "--target-is-zero", src, nbdURI(tsock))
	if out, err := nbdcopy.CombinedOutput(); err != nil {
		b.Fatalf("nbdcopy: %v: %s", err, out)
	}
	_ = srv.Process.Signal(syscall.SIGTERM) // qemu-nbd flushes and closes the image
	if err := srv.Wait(); err != nil {
		b.Fatalf("qemu-nbd serving the nbdcopy target: %v", err)
	}
	r := src0.since(time.Since(start), pid)
	r.own, r.sink = childCPU(nbdcopy), childCPU(srv)
	r.cpu += r.own + r.sink
	if err := os.Remove(target); err != nil {
		b.Fatal(err)
	}
	return r
}

// benchQemuImg converts the export into a zstd-compressed qcow2; CPU
// counts qemu-img and the export.
func benchQemuImg(b *testing.B, e export) benchRound {
	b.Helper()
	target := filepath.Join(b.TempDir(), "qemu-img.qcow2")
	pid := strconv.Itoa(e.pid)
	src0 := sampleSource(pid)
	start := time.Now()
	convert := exec.Command("qemu-img", "convert", "-W", "-m", "8", "-f", "raw", "-O", "qcow2",
		"-o", "compression_type=zstd", "-c", nbdURI(e.sock), target)
	if out, err := convert.CombinedOutput(); err != nil {
		b.Fatalf("qemu-img convert: %v: %s", err, out)
	}
	// qemu-img leaves the image in the page cache; the others flush.
	testenv.Run(b, "sync", "-d", target)
	r := src0.since(time.Since(start), pid)
	r.cpu += childCPU(convert)
	if err := os.Remove(target); err != nil {
		b.Fatal(err)
	}
	return r
}

func childCPU(cmd *exec.Cmd) float64 {
	return (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
}

// statFields returns the fields of /proc/<pid>/stat after the command
// name, the first being the state (field 3 of proc(5)).
func statFields(pid string) []string {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return nil
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return nil
	}
	return f
}

// cpuSeconds reads the user and system time of /proc/<pid>/stat.
func cpuSeconds(pid string) float64 {
	f := statFields(pid)
	if f == nil {
		return 0
	}
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100 // clock ticks; USER_HZ is 100 on Linux
}

// minorFaults reads minflt of /proc/<pid>/stat.
func minorFaults(pid string) int64 {
	f := statFields(pid)
	if f == nil {
		return 0
	}
	n, _ := strconv.ParseInt(f[7], 10, 64)
	return n
}

// memPeak is what sampleMemory saw: this process's resident set above
// where it started, its Go heap, and the cache's qemu-nbd.
type memPeak struct {
	rssDelta, heap, qemuNBD int64
}

func (p memPeak) max(q memPeak) memPeak {
	return memPeak{max(p.rssDelta, q.rssDelta), max(p.heap, q.heap), max(p.qemuNBD, q.qemuNBD)}
}

func (p memPeak) String() string {
	return fmt.Sprintf("agent RSS +%d MiB (Go heap in use %d MiB), cache qemu-nbd RSS %d MiB",
		p.rssDelta/mib, p.heap/mib, p.qemuNBD/mib)
}

// sampleMemory samples memory every 20 ms until the returned function is
// called, which returns the peaks.
func sampleMemory(pidFile string) func() memPeak {
	base := rss("self")
	var peak memPeak
	done := make(chan struct{})
	var wg sync.WaitGroup
	sample := func() {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		peak.rssDelta = max(peak.rssDelta, rss("self")-base)
		peak.heap = max(peak.heap, int64(ms.HeapInuse))
		if b, err := os.ReadFile(pidFile); err == nil {
			peak.qemuNBD = max(peak.qemuNBD, rss(strings.TrimSpace(string(b))))
		}
	}
	wg.Go(func() {
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				sample()
			}
		}
	})
	return func() memPeak {
		close(done)
		wg.Wait()
		return peak
	}
}

// rss reads VmRSS of /proc/<pid>/status in bytes; 0 when unknown.
func rss(pid string) int64 {
	b, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// BenchmarkConvertingLocal is the local pair of BenchmarkConverting alone,
// Ferry and nbdcopy on the 4 GiB source, interleaved FERRY_BENCH_ROUNDS
// times (default 5): the quick measure of a change to the copy's CPU. It
// prints the all-process CPU seconds per GiB of each.
func BenchmarkConvertingLocal(b *testing.B) {
	requireQemu(b)
	testenv.LookPath(b, "nbdcopy")
	rounds := benchRounds(5)
	small, _ := benchSources(b)
	sock, pid := serveReadOnlyPID(b, small, "qcow2")
	e := export{sock, pid}
	b.ResetTimer()
	for range b.N {
		runs := []*benchRun{
			{name: "ferry 4 GiB", run: func(first bool) benchRound {
				r, _ := benchFerry(b, small, e, 4<<30, first, func() *nbd.Client { return dialNBD(b, sock, nbd.Options{}) })
				return r
			}},
			{name: "nbdcopy 4 GiB", run: func(bool) benchRound { return benchNBDCopy(b, e, nbdURI(sock), 4<<30) }},
		}
		interleave(runs, rounds)
		benchf("%d rounds, interleaved; load average before the report: %s", rounds, loadAverage())
		for _, r := range runs {
			med, least := r.seconds()
			cpu, _ := r.medianMin(func(x benchRound) float64 { return x.cpu })
			own, _ := r.medianMin(func(x benchRound) float64 { return x.own })
			sink, _ := r.medianMin(func(x benchRound) float64 { return x.sink })
			src, _ := r.medianMin(func(x benchRound) float64 { return x.srcCPU })
			benchf("%-14s median %5.2f s, min %5.2f s; CPU-s per GiB of data (medians): all %.2f, copier %.2f, target %.2f, source %.2f",
				r.name, med, least, cpu, own, sink, src)
		}
		fm, fl := runs[0].seconds()
		nm, nl := runs[1].seconds()
		var paired []float64
		for i := range rounds {
			paired = append(paired, runs[1].runs[i].d.Seconds()/runs[0].runs[i].d.Seconds())
		}
		sort.Float64s(paired)
		benchf("speed ferry/nbdcopy local: medians %.2f, minima %.2f, median of rounds %.2f (goal >= 1.0)",
			nm/fm, nl/fl, paired[len(paired)/2])
		b.ReportMetric(nm/fm, "ferry/nbdcopy")
	}
}
