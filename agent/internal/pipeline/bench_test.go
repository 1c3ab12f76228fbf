package pipeline

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
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

// benchRun is one contender of BenchmarkConverting and its best time.
type benchRun struct {
	name  string
	run   func(first bool) (time.Duration, float64)
	best  time.Duration
	cpu   float64  // the least CPU seconds of a round, all processes
	times []string // of every round, in seconds
}

// BenchmarkConverting times the CONVERTING copy of one NBD export into a
// zstd-compressed qcow2 cache, side by side with nbdcopy into the same
// kind of target and qemu-img convert, then Ferry again on a 64 GiB disk
// holding the same data. Every time ends with the target durable. The
// four runs take turns, FERRY_BENCH_ROUNDS times (default 2), and the
// best time of each counts, as this machine is shared.
func BenchmarkConverting(b *testing.B) {
	requireQemu(b)
	testenv.LookPath(b, "nbdcopy")
	rounds := 2
	if n, err := strconv.Atoi(os.Getenv("FERRY_BENCH_ROUNDS")); err == nil && n > 0 {
		rounds = n
	}
	small, large := benchSources(b)
	smallSrc, smallPID := serveReadOnlyPID(b, small, "qcow2")
	largeSrc, largePID := serveReadOnlyPID(b, large, "qcow2")
	small4 := export{smallSrc, smallPID}
	b.ResetTimer()
	for range b.N {
		var peak memPeak
		ferry := func(src string, e export, size int64) func(bool) (time.Duration, float64) {
			return func(first bool) (time.Duration, float64) {
				d, cpu, p := benchFerry(b, src, e, size, first)
				peak = peak.max(p)
				return d, cpu
			}
		}
		runs := []*benchRun{
			{name: "ferry 4 GiB -> zstd qcow2", run: ferry(small, small4, 4<<30)},
			{name: "nbdcopy 4 GiB -> zstd qcow2", run: func(bool) (time.Duration, float64) { return benchNBDCopy(b, small4, 4<<30) }},
			{name: "qemu-img convert -c zstd", run: func(bool) (time.Duration, float64) { return benchQemuImg(b, small4) }},
			{name: "ferry 64 GiB -> zstd qcow2", run: ferry(large, export{largeSrc, largePID}, 64<<30)},
		}
		for r := range rounds {
			for k := range runs {
				run := runs[(k+r)%len(runs)]
				d, cpu := run.run(r == 0)
				run.times = append(run.times, fmt.Sprintf("%.2f", d.Seconds()))
				if run.best == 0 || d < run.best {
					run.best = d
				}
				if run.cpu == 0 || cpu < run.cpu {
					run.cpu = cpu
				}
			}
		}
		reportConverting(b, runs, peak)
	}
}

// reportConverting prints a summary line per figure and reports metrics.
func reportConverting(b *testing.B, runs []*benchRun, peak memPeak) {
	ferry, nbdcopy, qemuImg, ferry64 := runs[0].best, runs[1].best, runs[2].best, runs[3].best
	for _, r := range runs {
		b.Logf("%-28s best %5.2f s, %4.0f MiB/s of data, CPU %.2f s (rounds: %s s)",
			r.name, r.best.Seconds(), 1024/r.best.Seconds(), r.cpu, strings.Join(r.times, " "))
	}
	b.Logf("speed ferry/nbdcopy %.2f (goal >= 1.0), ferry/qemu-img %.2f (goal > 1.0)",
		nbdcopy.Seconds()/ferry.Seconds(), qemuImg.Seconds()/ferry.Seconds())
	b.Logf("time 64 GiB / 4 GiB %.2f (goal < 1.2); CPU ferry/nbdcopy %.2f, ferry/qemu-img %.2f",
		ferry64.Seconds()/ferry.Seconds(), runs[0].cpu/runs[1].cpu, runs[0].cpu/runs[2].cpu)
	b.Logf("peak during Ferry's copies: %s", peak)
	b.ReportMetric(ferry.Seconds(), "ferry-s")
	b.ReportMetric(nbdcopy.Seconds(), "nbdcopy-s")
	b.ReportMetric(qemuImg.Seconds(), "qemu-img-s")
	b.ReportMetric(ferry64.Seconds(), "ferry64-s")
	b.ReportMetric(nbdcopy.Seconds()/ferry.Seconds(), "ferry/nbdcopy")
	b.ReportMetric(float64(peak.rssDelta)/float64(mib), "rss-delta-MiB")
}

// export is a read-only source export and the pid of its qemu-nbd.
type export struct {
	sock string
	pid  int
}

// benchFerry copies the export into a new compressed cache image with a
// checkpoint, as the agent does, and closes it. It returns the time, the
// CPU seconds of this process and both qemu-nbd, and the memory peaks.
// With verify, the image is compared with the source afterwards.
func benchFerry(b *testing.B, src string, e export, size int64, verify bool) (time.Duration, float64, memPeak) {
	b.Helper()
	dir := b.TempDir()
	runtime.GC()
	cpu0 := cpuSeconds("self") + cpuSeconds(strconv.Itoa(e.pid))
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
	nbdSrc := dialSource(b, e.sock)
	defer nbdSrc.Client.Close() // the export takes a few connections at a time
	st, err := Copy(context.Background(), nbdSrc, img, Options{Checkpoint: cp})
	if err != nil {
		b.Fatal(err)
	}
	pid, _ := os.ReadFile(filepath.Join(dir, "vda.pid"))
	target := cpuSeconds(strings.TrimSpace(string(pid))) // before it exits; misses the last flush
	if err := img.Close(); err != nil {
		b.Fatal(err)
	}
	elapsed := time.Since(start)
	peak := stop()
	cpu := cpuSeconds("self") + cpuSeconds(strconv.Itoa(e.pid)) - cpu0 + target
	if st.DataBytes != 1<<30 {
		b.Fatalf("copied %d data bytes, want 1 GiB", st.DataBytes)
	}
	if verify {
		testenv.Run(b, "qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", src, img.Path())
	}
	if err := os.RemoveAll(dir); err != nil {
		b.Fatal(err)
	}
	return elapsed, cpu, peak
}

// benchNBDCopy runs nbdcopy from the export into a zstd qcow2 made as the
// cache's are and served by qemu-nbd's compress filter, and stops that
// server. It returns the time and the CPU seconds of the three processes.
func benchNBDCopy(b *testing.B, e export, size int64) (time.Duration, float64) {
	b.Helper()
	dir := b.TempDir()
	target, tsock := filepath.Join(dir, "nbdcopy.qcow2"), filepath.Join(dir, "t.sock")
	cpu0 := cpuSeconds(strconv.Itoa(e.pid))
	start := time.Now()
	testenv.Run(b, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "compression_type=zstd,lazy_refcounts=on",
		target, fmt.Sprint(size))
	srv := exec.Command("qemu-nbd", "-t", "-k", tsock, "--image-opts",
		"driver=compress,file.driver=qcow2,file.file.driver=file,file.file.filename="+target)
	if err := srv.Start(); err != nil {
		b.Fatal(err)
	}
	uri := func(s string) string { return "nbd+unix:///?socket=" + s }
	deadline := time.Now().Add(10 * time.Second)
	for exec.Command("nbdinfo", "--size", uri(tsock)).Run() != nil {
		if time.Now().After(deadline) {
			b.Fatal("the nbdcopy target did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	nbdcopy := exec.Command("nbdcopy", "--target-is-zero", uri(e.sock), uri(tsock))
	if out, err := nbdcopy.CombinedOutput(); err != nil {
		b.Fatalf("nbdcopy: %v: %s", err, out)
	}
	_ = srv.Process.Signal(syscall.SIGTERM) // qemu-nbd flushes and closes the image
	if err := srv.Wait(); err != nil {
		b.Fatalf("qemu-nbd serving the nbdcopy target: %v", err)
	}
	d := time.Since(start)
	cpu := cpuSeconds(strconv.Itoa(e.pid)) - cpu0 + childCPU(nbdcopy) + childCPU(srv)
	if err := os.Remove(target); err != nil {
		b.Fatal(err)
	}
	return d, cpu
}

// benchQemuImg converts the export into a zstd-compressed qcow2 and
// returns the time and the CPU seconds of qemu-img and the export.
func benchQemuImg(b *testing.B, e export) (time.Duration, float64) {
	b.Helper()
	target := filepath.Join(b.TempDir(), "qemu-img.qcow2")
	cpu0 := cpuSeconds(strconv.Itoa(e.pid))
	start := time.Now()
	convert := exec.Command("qemu-img", "convert", "-W", "-m", "8", "-f", "raw", "-O", "qcow2",
		"-o", "compression_type=zstd", "-c", "nbd+unix:///?socket="+e.sock, target)
	if out, err := convert.CombinedOutput(); err != nil {
		b.Fatalf("qemu-img convert: %v: %s", err, out)
	}
	// qemu-img leaves the image in the page cache; the others flush.
	testenv.Run(b, "sync", "-d", target)
	d := time.Since(start)
	cpu := cpuSeconds(strconv.Itoa(e.pid)) - cpu0 + childCPU(convert)
	if err := os.Remove(target); err != nil {
		b.Fatal(err)
	}
	return d, cpu
}

func childCPU(cmd *exec.Cmd) float64 {
	return (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
}

// cpuSeconds reads the user and system time of /proc/<pid>/stat.
func cpuSeconds(pid string) float64 {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100 // clock ticks; USER_HZ is 100 on Linux
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
