package e2e

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"
)

// settleIdle is how long the agent idles before its RSS is read.
const settleIdle = 10 * time.Second

// BenchmarkMemory reads the VmRSS of a real ferry-agent, idle with its
// session, fresh and then after it migrated a running VM whose root disk
// holds 256 MiB of random data (CONVERTING, UPLOADING, verify,
// CONFIGURING). Goal: under 50 MiB in both. It runs once, whatever b.N.
// (coordinator/internal/bench's BenchmarkMemory measures the
// coordinator, and a fresh agent.)
func BenchmarkMemory(b *testing.B) {
	w := newWorld(b)
	pid := w.f.agents[w.host].cmd.Process.Pid
	time.Sleep(settleIdle)
	fresh := agentRSS(b, pid)
	src := testenv.NewTestVM(b, w.lv, testenv.VMOptions{RandomBytes: 256 << 20})
	vm := w.sourceVM(w.source, src.Name)
	name := w.createJob(w.spec(vm, nil))
	start := time.Now()
	job := w.waitJob(name, 10*time.Minute, "the job to end", terminal)
	if job.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
		b.Fatalf("job ended %s: %s", job.GetState(), job.GetReason())
	}
	took := time.Since(start)
	during := agentRSS(b, pid)
	time.Sleep(settleIdle)
	after := agentRSS(b, pid)
	verdict := func(rss float64) string {
		if rss < 50 {
			return "met"
		}
		return "MISSED"
	}
	fmt.Printf("    load average %s\n", loadAverage())
	fmt.Printf("    idle ferry-agent fresh: RSS %.1f MiB (goal < 50 MiB %s)\n", fresh["VmRSS"], verdict(fresh["VmRSS"]))
	// The file-backed part is mostly the binary's own text and data, which
	// the kernel maps whole (large folios) however little of it runs.
	fmt.Printf("      of it anonymous %.1f MiB, file-backed %.1f MiB; %.0f threads; after the job %.1f, %.1f and %.0f\n",
		fresh["RssAnon"], fresh["RssFile"], fresh["Threads"], after["RssAnon"], after["RssFile"], after["Threads"])
	fmt.Printf("    idle ferry-agent %v after a job of %v (256 MiB of data): RSS %.1f MiB, %.1f MiB as the job ended, peak %.1f MiB (goal < 50 MiB %s)\n",
		settleIdle, took.Round(time.Second), after["VmRSS"], during["VmRSS"], after["VmHWM"], verdict(after["VmRSS"]))
	b.ReportMetric(fresh["VmRSS"], "fresh-rss-MiB")
	b.ReportMetric(after["VmRSS"], "after-job-rss-MiB")
	b.ReportMetric(after["VmHWM"], "peak-rss-MiB")
}

// agentRSS reads VmRSS, VmHWM, RssAnon and RssFile of /proc/<pid>/status
// in MiB, and Threads.
func agentRSS(b *testing.B, pid int) map[string]float64 {
	b.Helper()
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		b.Fatal(err)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(raw), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "Threads:" {
			out["Threads"], _ = strconv.ParseFloat(f[1], 64)
		} else if len(f) >= 2 && (f[0] == "VmRSS:" || f[0] == "VmHWM:" || f[0] == "RssAnon:" || f[0] == "RssFile:") {
			kb, _ := strconv.ParseFloat(f[1], 64)
			out[strings.TrimSuffix(f[0], ":")] = kb / 1024
		}
	}
	return out
}

// loadAverage is the first three fields of /proc/loadavg.
func loadAverage() string {
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(raw))
	return strings.Join(f[:min(3, len(f))], " ")
}
