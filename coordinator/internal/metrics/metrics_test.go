package metrics

import (
	"bytes"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"
)

// TestJobCounts feeds the job events and progress reports of one job's
// life and reads the counters: bytes grow by what each report adds, a
// second report of the same totals adds nothing, a new assignment starts
// again from zero, a failure counts by class and a restart as a retry.
func TestJobCounts(t *testing.T) {
	now := time.Now()
	m := New(Deps{Ledger: ledger.New(), Clock: func() time.Time { return now }})
	ts := timestamppb.New(now)
	job := func(s ferryv1.MigrationJobState, reason string) ledger.JobEvent {
		return ledger.JobEvent{Job: &ferryv1.MigrationJob{Name: "migrationJobs/j1", MigrationServer: "migrationServers/kvm-1", State: s,
			Reason: reason, CreateTime: ts, StartTime: ts, UpdateTime: ts, EndTime: timestamppb.New(now.Add(90 * time.Second))}}
	}
	conv := func(n int64, rate float64) []*ferryv1.PhaseTiming {
		return []*ferryv1.PhaseTiming{{Phase: ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONVERTING, Bytes: n, BytesPerSecond: rate}}
	}
	m.JobChanged(job(ferryv1.MigrationJobState_MIGRATION_JOB_STATE_QUEUED, ""))
	m.JobChanged(job(ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING, ""))
	m.JobProgress("migrationJobs/j1", "migrationServers/kvm-1", 1, conv(100, 50), nil, false)
	m.JobProgress("migrationJobs/j1", "migrationServers/kvm-1", 1, conv(300, 50), nil, false)
	m.JobProgress("migrationJobs/j1", "migrationServers/kvm-1", 1, conv(300, 50), nil, false)
	copied := m.bytes.WithLabelValues("kvm-1", dirCopied)
	if v := testutil.ToFloat64(copied); v != 300 {
		t.Errorf("copied = %v after reports of 100, 300, 300; want 300", v)
	}
	m.JobChanged(job(ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED, "ssh: handshake failed: source host unreachable"))
	if v := testutil.ToFloat64(m.failures.WithLabelValues("source")); v != 1 {
		t.Errorf("failures{reason=source} = %v, want 1", v)
	}
	if n := testutil.CollectAndCount(m.jobDuration); n != 1 {
		t.Errorf("%d duration series, want 1", n)
	}
	m.JobChanged(job(ferryv1.MigrationJobState_MIGRATION_JOB_STATE_QUEUED, ""))
	if v := testutil.ToFloat64(m.retries); v != 1 {
		t.Errorf("retries = %v, want 1", v)
	}
	m.JobProgress("migrationJobs/j1", "migrationServers/kvm-1", 2, conv(50, 0), []*ferryv1.DiskProgress{{SourceDisk: "vda", TotalBytes: 7, Verified: true}}, true)
	if v := testutil.ToFloat64(copied); v != 350 {
		t.Errorf("copied = %v after a new assignment reported 50; want 350", v)
	}
	if v := testutil.ToFloat64(m.bytes.WithLabelValues("kvm-1", dirVerified)); v != 7 {
		t.Errorf("verified = %v, want 7", v)
	}
}

// TestReplayedHistoryIsNotCounted: the log replaying at start-up shows old
// changes again; they are not observed.
func TestReplayedHistoryIsNotCounted(t *testing.T) {
	now := time.Now()
	m := New(Deps{Ledger: ledger.New(), Clock: func() time.Time { return now }})
	old := timestamppb.New(now.Add(-time.Hour))
	for _, s := range []ferryv1.MigrationJobState{ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING, ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED} {
		m.JobChanged(ledger.JobEvent{Job: &ferryv1.MigrationJob{Name: "migrationJobs/old", State: s, Reason: "disk lost", UpdateTime: old, StartTime: old, EndTime: old}})
	}
	if n := testutil.CollectAndCount(m.jobDuration); n != 0 {
		t.Errorf("a replayed job's end observed %d durations", n)
	}
}

func TestReasonClass(t *testing.T) {
	for reason, want := range map[string]string{
		"agent of hosts/kvm-1 was gone longer than the grace period": "agent_lost",
		"verify disk vda: extent hashes differ (mismatch at 4096)":   "verification",
		"upload vda: qemu-img convert: exit status 1":                "target_storage",
		"define domain web-1: operation failed":                      "target_vm",
		"connect to vCenter 10.0.0.5: 503":                           "source",
		"something else entirely":                                    "other",
	} {
		if got := ReasonClass(reason); got != want {
			t.Errorf("ReasonClass(%q) = %s, want %s", reason, got, want)
		}
	}
}

// TestScrapeLint fills a ledger with a server, its host and jobs in each
// state, scrapes the registry and has promtool lint it (skipped, saying
// so, where promtool is not installed; failed then under CI=true).
func TestScrapeLint(t *testing.T) {
	l := ledger.New()
	now := time.Now()
	for _, c := range []*ledgerv1.Command{
		{Op: &ledgerv1.Command_PutHost{PutHost: &ledgerv1.PutHost{Host: &ferryv1.Host{Name: "hosts/h1", Connected: true, Facts: &ferryv1.HostFacts{
			Storages: []*ferryv1.StorageSpace{{Path: "/cache", TotalBytes: 100 << 30, FreeBytes: 60 << 30}}}}}}},
		{Op: &ledgerv1.Command_PutMigrationServer{PutMigrationServer: &ledgerv1.PutMigrationServer{MigrationServer: &ferryv1.MigrationServer{
			Name: "migrationServers/kvm-1", Host: "hosts/h1", Type: ferryv1.Platform_PLATFORM_KVM, CachePath: "/cache", Enabled: true}}}},
	} {
		c.Time = timestamppb.New(now)
		if _, err := l.Apply(c); err != nil {
			t.Fatal(err)
		}
	}
	m := New(Deps{Ledger: l})
	m.JobProgress("migrationJobs/j1", "migrationServers/kvm-1", 1, []*ferryv1.PhaseTiming{
		{Phase: ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONVERTING, Bytes: 10, BytesPerSecond: 5}}, nil, false)
	m.ObserveApply(3 * time.Millisecond)
	m.LeadershipChanged()
	var buf bytes.Buffer
	families, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if !strings.HasPrefix(f.GetName(), "ferry_") && !strings.HasPrefix(f.GetName(), "go_") && !strings.HasPrefix(f.GetName(), "process_") {
			t.Errorf("metric %s: want the ferry_ prefix", f.GetName())
		}
	}
	enc := expfmt.NewEncoder(&buf, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, f := range families {
		if err := enc.Encode(f); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []string{`ferry_migration_jobs{phase="",state="queued"} 0`, `ferry_migration_server_cache_free_bytes{server="kvm-1"} 6.442450944e+10`,
		`ferry_migration_server_cache_used_bytes{server="kvm-1"} 4.294967296e+10`, `ferry_agent_sessions 1`,
		`ferry_migration_rate_bytes_per_second{direction="copied",server="kvm-1"} 5`, `ferry_migration_job_failures_total{reason="source"} 0`} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("the scrape lacks %s:\n%s", want, buf.String())
		}
	}
	if _, err := exec.LookPath("promtool"); err != nil {
		testenv.Unavailable(t, "promtool is not installed, so the scrape is not linted: run scripts/deps.sh (Debian package prometheus)")
	}
	cmd := exec.Command("promtool", "check", "metrics")
	cmd.Stdin = &buf
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}
