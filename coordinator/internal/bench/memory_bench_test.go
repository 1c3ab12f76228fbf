package bench

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/tlsutil"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

const (
	memoryJobs = 10_000
	// settle is how long a process idles before its RSS is read.
	settle = 10 * time.Second
)

// BenchmarkMemory reads VmRSS from /proc of real processes: a
// ferry-coordinator (one node) holding 10,000 queued jobs, created 50 a
// call through the API on a disabled migration server, and an idle
// ferry-agent connected to it. Goals: under 200 MiB and 50 MiB.
func BenchmarkMemory(b *testing.B) {
	bin := buildBinaries(b)
	co := startCoordinator(b, bin)
	api := newAPI(co.dial(b))
	seedJobReferences(b, api)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	b.Run("coordinator-10000-jobs", func(b *testing.B) {
		fillLedger(ctx, b, co, api)
		// The settling time doubles as a look at what an idle leader with
		// a long queue costs: nothing runs, nothing is connected.
		idle, err := cpuOver(ctx, co.pid(), settle)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(idle, "idle-cores")
		reportRSS(b, fmt.Sprintf("ferry-coordinator holding 10000 queued jobs (idle CPU %.3f cores)", idle), co.pid(), "coordinator-rss-MiB", 200)
	})
	b.Run("idle-agent", func(b *testing.B) {
		agent := startProcess(b, "ferry-agent", filepath.Join(bin, "ferry-agent"),
			"--coordinator", co.addr, "--host-name", "idle-agent", "--data-dir", filepath.Join(b.TempDir(), "agent"),
			"--tls-dir", co.issue(b, tlsutil.Identity{Role: tlsutil.RoleIDAgent, Name: "idle-agent"}), "--log-level", "warn")
		testkit.WaitFor(b, 30*time.Second, "ferry-agent to connect (log "+agent.log+")", func() bool {
			resp, err := api.inv.GetHost(ctx, &ferryv1.GetHostRequest{Name: "hosts/idle-agent"})
			return err == nil && resp.GetConnected()
		})
		time.Sleep(settle)
		reportRSS(b, "idle ferry-agent with a session", agent.pid(), "agent-rss-MiB", 50)
	})
}

// fillLedger creates memoryJobs queued jobs, 50 a call, on a migration
// server that is disabled so none starts.
func fillLedger(ctx context.Context, b *testing.B, co *coordinator, api *apiClients) {
	b.Helper()
	if err := registerHost(ctx, co.dialAgent(b, "mem-host"), "mem-host"); err != nil {
		b.Fatal(err)
	}
	if err := createServer(ctx, api, "migrationServers/mem", "hosts/mem-host"); err != nil {
		b.Fatal(err)
	}
	if _, err := api.servers.DisableMigrationServer(ctx, &ferryv1.DisableMigrationServerRequest{Name: "migrationServers/mem"}); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	for i := 0; i < memoryJobs; i += 50 {
		if _, err := api.jobs.CreateMigrationJobs(ctx, jobsRequest("migrationServers/mem", i, 50)); err != nil {
			b.Fatalf("create jobs %d-%d: %v", i, i+49, err)
		}
	}
	n, err := countJobs(ctx, api, ferryv1.MigrationJobState_MIGRATION_JOB_STATE_QUEUED)
	if err != nil || n != memoryJobs {
		b.Fatalf("%d queued jobs (err %v), want %d", n, err, memoryJobs)
	}
	b.Logf("created %d queued jobs in %s", n, time.Since(start).Round(time.Millisecond))
}

// reportRSS reports pid's VmRSS as metric and logs it with its peak and
// whether it stays under goalMiB.
func reportRSS(b *testing.B, what string, pid int, metric string, goalMiB float64) {
	b.Helper()
	mem, err := memStatus(pid, "VmRSS", "VmHWM")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(mem["VmRSS"], metric)
	b.ReportMetric(mem["VmHWM"], "peak-"+metric)
	verdict := "met"
	if mem["VmRSS"] >= goalMiB {
		verdict = "MISSED"
	}
	b.Logf("%s: RSS %.1f MiB (peak %.1f MiB); goal < %.0f MiB %s", what, mem["VmRSS"], mem["VmHWM"], goalMiB, verdict)
}
