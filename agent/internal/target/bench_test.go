package target

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferry-v2v/ferry/agent/internal/runner"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"
)

const (
	benchSize = 4 << 30
	benchData = 1 << 30
)

// benchSource makes the whole-job benchmark's source once and keeps it
// under the temporary directory: a 4 GiB qcow2 holding 1 GiB, 256 MiB of
// one byte and 768 MiB of random bytes in three runs (the layout of
// BenchmarkConverting's source).
func benchSource(b *testing.B) string {
	b.Helper()
	dir := filepath.Join(os.TempDir(), "ferry-bench-wholejob-v1")
	src, ready := filepath.Join(dir, "source-4g.qcow2"), filepath.Join(dir, "ready")
	if _, err := os.Stat(ready); err == nil {
		return src
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		b.Fatal(err)
	}
	raw := filepath.Join(dir, "source.raw")
	f, err := os.Create(raw)
	if err != nil {
		b.Fatal(err)
	}
	if err := f.Truncate(benchSize); err != nil {
		b.Fatal(err)
	}
	rng := rand.NewChaCha8([32]byte{7})
	buf := make([]byte, 4<<20)
	for k, off := range []int64{0, 1 << 30, 2 << 30, 3 << 30} {
		for n := int64(0); n < 256<<20; n += int64(len(buf)) {
			if k == 0 {
				for i := range buf {
					buf[i] = 0x5a
				}
			} else {
				_, _ = rng.Read(buf)
			}
			if _, err := f.WriteAt(buf, off+n); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	testenv.Run(b, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, src)
	if err := os.Remove(raw); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(ready, nil, 0o600); err != nil {
		b.Fatal(err)
	}
	return src
}

// idleTarget uploads nothing: a job that is CONVERTING alone.
type idleTarget struct{}

func (idleTarget) Upload(context.Context, *runner.Job) error                { return nil }
func (idleTarget) Configure(context.Context, *runner.Job) ([]string, error) { return nil, nil }

// benchJob runs one job of the source on a new runner, with target as the
// target driver, and returns its time from assignment to result and the
// result.
func benchJob(b *testing.B, src Endpoint, target runner.Target) (time.Duration, *agentv1.JobResult) {
	b.Helper()
	return benchJobOf(b, src, benchSize, target)
}

// benchJobOf is benchJob of a source disk of size bytes.
func benchJobOf(b *testing.B, src Endpoint, size int64, target runner.Target) (time.Duration, *agentv1.JobResult) {
	b.Helper()
	cacheDir, storageDir := shortTempDir(b), volumeDir(b)
	res := results{ch: make(chan *agentv1.JobResult, 1)}
	r := runner.New(runner.Config{DataDir: b.TempDir()}, runner.Deps{
		Drivers:  runner.Drivers{Sources: map[ferryv1.Platform]runner.Source{ferryv1.Platform_PLATFORM_KVM: &cacheSource{src: src}}, Target: target},
		Reporter: res, Logger: benchLog()})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = r.Run(ctx) }()
	defer func() { cancel(); <-done }()
	a := &agentv1.Assignment{
		Job: &ferryv1.MigrationJob{Name: "migrationJobs/bench", SourceVm: "vm",
			Target: &ferryv1.TargetVm{Disks: []*ferryv1.TargetDisk{{SourceDisk: "vda", SizeBytes: size}}}},
		Epoch: 1, Source: &ferryv1.Source{Type: ferryv1.Platform_PLATFORM_KVM},
		MigrationServer: &ferryv1.MigrationServer{Name: "migrationServers/bench", CachePath: cacheDir},
		PrimaryStorage:  storage(ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_LOCAL, storageDir, "", ""),
	}
	start := time.Now()
	if err := r.Start(a); err != nil {
		b.Fatal(err)
	}
	var got *agentv1.JobResult
	select {
	case got = <-res.ch:
	case <-time.After(20 * time.Minute):
		b.Fatal("no result within 20 minutes")
	}
	d := time.Since(start)
	if got.GetOutcome() != agentv1.JobOutcome_JOB_OUTCOME_SUCCEEDED {
		b.Fatalf("job %s: %s", got.GetOutcome(), got.GetReason())
	}
	_ = os.RemoveAll(cacheDir)
	_ = os.RemoveAll(storageDir)
	return d, got
}

// volumeDir is a new directory for a benchmark's target volumes: under
// $FERRY_BENCH_VOLUME_DIR when set (primary storage on another device
// than the cache, as on a real host; on a machine with one disk, a zram
// or tmpfs-backed file system stands in for it), else a temporary one
// beside the cache.
func volumeDir(b *testing.B) string {
	b.Helper()
	root := os.Getenv("FERRY_BENCH_VOLUME_DIR")
	if root == "" {
		return b.TempDir()
	}
	dir, err := os.MkdirTemp(root, "ferry-bench-vol-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// benchOperator is the sequence a careful operator would script: nbdcopy
// from the source export into a zstd qcow2 cache (served by qemu-nbd's
// compress filter, as Ferry's cache is), qemu-img convert of the cache
// onto the target qcow2, made durable, then qemu-img compare of the
// target with the source export.
func benchOperator(b *testing.B, src Endpoint) (total, copyTime, convertTime, compareTime time.Duration) {
	b.Helper()
	dir := shortTempDir(b)
	vdir := volumeDir(b)
	defer os.RemoveAll(vdir)
	cacheImg, tsock, target := filepath.Join(dir, "cache.qcow2"), filepath.Join(dir, "c.sock"), filepath.Join(vdir, "target.qcow2")
	uri := func(s string) string { return "nbd+unix:///?socket=" + s }
	start := time.Now()
	testenv.Run(b, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "compression_type=zstd,lazy_refcounts=on", cacheImg, strconv.Itoa(benchSize))
	srv := exec.Command("qemu-nbd", "-t", "-k", tsock, "--image-opts",
		"driver=compress,file.driver=qcow2,file.file.driver=file,file.file.filename="+cacheImg)
	if err := srv.Start(); err != nil {
		b.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for exec.Command("nbdinfo", "--size", uri(tsock)).Run() != nil {
		if time.Now().After(deadline) {
			b.Fatal("the operator's cache did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	testenv.Run(b, "nbdcopy", "--target-is-zero", src.URI(), uri(tsock))
	_ = srv.Process.Signal(syscall.SIGTERM) // qemu-nbd flushes and closes the cache
	if err := srv.Wait(); err != nil {
		b.Fatalf("qemu-nbd serving the operator's cache: %v", err)
	}
	copyTime = time.Since(start)
	testenv.Run(b, "qemu-img", "convert", "-W", "-m", "8", "-f", "qcow2", "-O", "qcow2", cacheImg, target)
	testenv.Run(b, "sync", target)
	convertTime = time.Since(start) - copyTime
	testenv.Run(b, "qemu-img", "compare", "-q", "-F", "qcow2", src.URI(), target)
	total = time.Since(start)
	compareTime = total - copyTime - convertTime
	_ = os.RemoveAll(dir)
	return total, copyTime, convertTime, compareTime
}

// BenchmarkWholeJob times a whole job (CONVERTING with the upload beside
// it, the rest of UPLOADING, verify) of a 4 GiB disk holding 1 GiB onto a
// local qcow2 volume, side by side with the same job writing the volume
// through its qemu-nbd (not straight into its file), CONVERTING alone,
// and the sequence a careful operator would script (nbdcopy to a cache,
// qemu-img convert to the target, qemu-img compare). The four take turns for
// FERRY_BENCH_ROUNDS rounds (default 3); medians and minima count, as this
// machine is shared. Goals: operator/ferry >= 1.0, whole job <= 1.3x
// CONVERTING alone.
func BenchmarkWholeJob(b *testing.B) {
	requireTools(b, "qemu-img", "qemu-nbd", "nbdcopy", "nbdinfo")
	rounds := 3
	if n, err := strconv.Atoi(os.Getenv("FERRY_BENCH_ROUNDS")); err == nil && n > 0 {
		rounds = n
	}
	src, srcPID := serveSource(b, benchSource(b))
	load0 := loadAverage()
	// CPU seconds of a contender: this process, the children it waited
	// for (every qemu-nbd and qemu-img it ran, nbdcopy) and the source's
	// qemu-nbd. Less sensitive to the others' load than wall time.
	cpuNow := func() float64 { return cpuSeconds("self") + childrenCPU() + cpuSeconds(srcPID) }
	// The disk under the temporary directory, where both the cache and
	// the volume are: its traffic and busy time per contender.
	disk := diskOf(os.TempDir())
	if v := os.Getenv("FERRY_BENCH_VOLUME_DIR"); v != "" {
		b.Logf("volumes under %s (device %q), the cache under %s (device %q)", v, diskOf(v).name, os.TempDir(), disk.name)
	}
	b.ResetTimer()
	for range b.N {
		var job, conv, op, jobConv, jobUp, jobTail, opCopy, opConvert, opCompare []float64
		var jobCPU, convCPU, opCPU []float64
		var jobDisk, convDisk, opDisk []diskUse
		var own, ownCPU []float64 // the whole job writing the volume through qemu-nbd
		contenders := []func(){
			func() {
				c0, d0 := cpuNow(), disk.now()
				d, r := benchJob(b, src, &noDomain{Driver: NewDriver("", Options{})})
				jobCPU, jobDisk = append(jobCPU, cpuNow()-c0), append(jobDisk, disk.now().sub(d0))
				job = append(job, d.Seconds())
				c, u := phaseOf(r, ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONVERTING), phaseOf(r, ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_UPLOADING)
				jobConv = append(jobConv, span(c))
				jobUp = append(jobUp, span(u))
				jobTail = append(jobTail, u.GetEndTime().AsTime().Sub(c.GetEndTime().AsTime()).Seconds())
				if c.GetBytes() != benchData || u.GetBytes() != benchData {
					b.Fatalf("the job moved %d bytes into the cache and %d onto the volume, want %d", c.GetBytes(), u.GetBytes(), benchData)
				}
				if !r.GetDisks()[0].GetVerified() {
					b.Fatal("the job's volume was not verified")
				}
			},
			func() {
				useDirect = false // the volume through its qemu-nbd, and qemu-img rounds
				defer func() { useDirect = true }()
				c0 := cpuNow()
				d, _ := benchJob(b, src, &noDomain{Driver: NewDriver("", Options{})})
				ownCPU = append(ownCPU, cpuNow()-c0)
				own = append(own, d.Seconds())
			},
			func() {
				c0, d0 := cpuNow(), disk.now()
				d, _ := benchJob(b, src, idleTarget{})
				convCPU, convDisk = append(convCPU, cpuNow()-c0), append(convDisk, disk.now().sub(d0))
				conv = append(conv, d.Seconds())
			},
			func() {
				c0, d0 := cpuNow(), disk.now()
				t, c, v, m := benchOperator(b, src)
				opCPU, opDisk = append(opCPU, cpuNow()-c0), append(opDisk, disk.now().sub(d0))
				op, opCopy, opConvert, opCompare = append(op, t.Seconds()), append(opCopy, c.Seconds()), append(opConvert, v.Seconds()), append(opCompare, m.Seconds())
			},
		}
		if only := os.Getenv("FERRY_BENCH_ONLY"); only != "" {
			// Profiling one of them: FERRY_BENCH_ONLY=0 (the job), 2
			// (CONVERTING alone), with -cpuprofile or -trace; no figures.
			k, err := strconv.Atoi(only)
			if err != nil || k < 0 || k >= len(contenders) {
				b.Fatalf("FERRY_BENCH_ONLY=%q: want 0 to %d", only, len(contenders)-1)
			}
			for range rounds {
				contenders[k]()
			}
			continue
		}
		for r := range rounds {
			for k := range contenders {
				contenders[(k+r)%len(contenders)]()
			}
		}
		b.Logf("load average before: %s; after: %s", load0, loadAverage())
		b.Logf("ferry whole job          median %6.2f s  min %6.2f s  (%s)", median(job), slices.Min(job), list(job))
		b.Logf("  within it: CONVERTING  median %6.2f s, UPLOADING (beside it) %6.2f s, upload tail after the copy %5.2f s",
			median(jobConv), median(jobUp), median(jobTail))
		b.Logf("  with the volume written through qemu-nbd (not directly): median %6.2f s, min %6.2f s (%s), CPU %.2f s",
			median(own), slices.Min(own), list(own), median(ownCPU))
		b.Logf("ferry CONVERTING alone   median %6.2f s  min %6.2f s  (%s)", median(conv), slices.Min(conv), list(conv))
		b.Logf("operator script          median %6.2f s  min %6.2f s  (%s): nbdcopy %5.2f s + qemu-img convert %5.2f s + qemu-img compare %5.2f s (medians)",
			median(op), slices.Min(op), list(op), median(opCopy), median(opConvert), median(opCompare))
		b.Logf("speed operator/ferry %.2f (goal >= 1.0); whole job / CONVERTING alone %.2f (goal <= 1.3); by minima %.2f and %.2f",
			median(op)/median(job), median(job)/median(conv), slices.Min(op)/slices.Min(job), slices.Min(job)/slices.Min(conv))
		b.Logf("CPU seconds (medians): ferry whole job %.2f, CONVERTING alone %.2f, operator script %.2f; operator/ferry %.2f, job/CONVERTING %.2f",
			median(jobCPU), median(convCPU), median(opCPU), median(opCPU)/median(jobCPU), median(jobCPU)/median(convCPU))
		if disk.name != "" {
			// Cache and volume share this disk: a job writes the cache, the
			// volume and reads the volume back (verify), CONVERTING alone
			// writes the cache only. A job whose disk was busy for most of
			// its time is bound by the disk, not by the copy.
			var parts []string
			for _, c := range []struct {
				name string
				use  []diskUse
				wall []float64
			}{{"whole job", jobDisk, job}, {"CONVERTING alone", convDisk, conv}, {"operator", opDisk, op}} {
				u := medianUse(c.use)
				parts = append(parts, fmt.Sprintf("%s read %.0f + written %.0f MiB, busy %.2f of %.2f s",
					c.name, u.readMiB, u.writtenMiB, u.busy, median(c.wall)))
			}
			// One line: a benchmark's log keeps its first ten.
			b.Logf("disk %s (cache, and volume unless FERRY_BENCH_VOLUME_DIR), medians: %s", disk.name, strings.Join(parts, "; "))
		}
		b.ReportMetric(median(job), "job-s")
		b.ReportMetric(median(conv), "converting-s")
		b.ReportMetric(median(op), "operator-s")
		b.ReportMetric(median(op)/median(job), "operator/job")
		b.ReportMetric(median(job)/median(conv), "job/converting")
	}
}

// blockDev reads a block device's counters (/sys/dev/block/MAJ:MIN/stat).
type blockDev struct{ name, stat string }

// diskUse is what a block device did between two readings.
type diskUse struct{ readMiB, writtenMiB, busy float64 }

// diskOf is the block device holding dir; an empty name when unknown
// (a tmpfs, an overlay).
func diskOf(dir string) blockDev {
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		return blockDev{}
	}
	sys := fmt.Sprintf("/sys/dev/block/%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev))
	link, err := os.Readlink(sys)
	if err != nil {
		return blockDev{}
	}
	return blockDev{name: filepath.Base(link), stat: filepath.Join(sys, "stat")}
}

// now reads the device's sectors read and written and its busy time
// (Documentation/block/stat.rst: fields 3, 7 and 10).
func (d blockDev) now() diskUse {
	b, err := os.ReadFile(d.stat)
	if err != nil {
		return diskUse{}
	}
	f := strings.Fields(string(b))
	if len(f) < 10 {
		return diskUse{}
	}
	field := func(i int) float64 { v, _ := strconv.ParseFloat(f[i], 64); return v }
	return diskUse{readMiB: field(2) * 512 / (1 << 20), writtenMiB: field(6) * 512 / (1 << 20), busy: field(9) / 1000}
}

func (u diskUse) sub(v diskUse) diskUse {
	return diskUse{u.readMiB - v.readMiB, u.writtenMiB - v.writtenMiB, u.busy - v.busy}
}

func medianUse(us []diskUse) diskUse {
	var r, w, t []float64
	for _, u := range us {
		r, w, t = append(r, u.readMiB), append(w, u.writtenMiB), append(t, u.busy)
	}
	if len(us) == 0 {
		return diskUse{}
	}
	return diskUse{median(r), median(w), median(t)}
}

func phaseOf(r *agentv1.JobResult, p ferryv1.MigrationJobPhase) *ferryv1.PhaseTiming {
	for _, t := range r.GetPhaseTimings() {
		if t.GetPhase() == p {
			return t
		}
	}
	return &ferryv1.PhaseTiming{}
}

func span(t *ferryv1.PhaseTiming) float64 {
	return t.GetEndTime().AsTime().Sub(t.GetStartTime().AsTime()).Seconds()
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if n := len(s); n%2 == 1 {
		return s[n/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func list(xs []float64) string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = fmt.Sprintf("%.2f", x)
	}
	return strings.Join(out, " ")
}

// benchLog logs the jobs' INFO lines to stderr when FERRY_BENCH_LOG is
// set, to see where a job's time goes.
func benchLog() *slog.Logger {
	if os.Getenv("FERRY_BENCH_LOG") == "" {
		return nil
	}
	level := slog.LevelInfo
	if os.Getenv("FERRY_BENCH_LOG") == "debug" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// serveSource serves the source read-only, as a backup export is, and
// returns its endpoint and qemu-nbd's pid.
func serveSource(b *testing.B, image string) (Endpoint, string) {
	b.Helper()
	sock := filepath.Join(shortTempDir(b), "src.sock")
	cmd := exec.Command("qemu-nbd", "--read-only", "--persistent", "--shared=8", "--socket="+sock, "--format=qcow2", image)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for exec.Command("nbdinfo", "--size", "nbd+unix:///?socket="+sock).Run() != nil {
		if time.Now().After(deadline) {
			b.Fatal("the source export did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return Endpoint{Socket: sock}, strconv.Itoa(cmd.Process.Pid)
}

// cpuSeconds is the user and system time of /proc/<pid>/stat.
func cpuSeconds(pid string) float64 { return statSeconds(pid, 11) + statSeconds(pid, 12) }

// childrenCPU is the user and system time of this process's children it
// waited for.
func childrenCPU() float64 { return statSeconds("self", 13) + statSeconds("self", 14) }

// statSeconds reads field i (after the command) of /proc/<pid>/stat, in
// clock ticks, as seconds (USER_HZ is 100 on Linux).
func statSeconds(pid string, i int) float64 {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) <= i {
		return 0
	}
	v, _ := strconv.ParseFloat(f[i], 64)
	return v / 100
}

// loadAverage is the first three fields of /proc/loadavg.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}
