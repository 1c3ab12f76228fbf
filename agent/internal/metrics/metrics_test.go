package metrics

import (
	"bytes"
	"os/exec"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"

	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"
)

type sink struct{ progress, results int }

func (s *sink) Progress(*agentv1.JobProgress) { s.progress++ }
func (s *sink) Result(*agentv1.JobResult)     { s.results++ }

// TestReportsCounted: the wrapped reporter passes every report on and
// counts what each adds, a verified disk once, the outcome, the session;
// the scrape passes promtool's lint.
func TestReportsCounted(t *testing.T) {
	m := New(t.TempDir())
	s := &sink{}
	r := m.Wrap(s)
	conv := func(n int64) []*ferryv1.PhaseTiming {
		return []*ferryv1.PhaseTiming{{Phase: ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONVERTING, Bytes: n, BytesPerSecond: 10}}
	}
	r.Progress(&agentv1.JobProgress{Job: "migrationJobs/j", Epoch: 1, Phase: ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONVERTING, PhaseTimings: conv(40)})
	r.Progress(&agentv1.JobProgress{Job: "migrationJobs/j", Epoch: 1, PhaseTimings: conv(100)})
	if v := testutil.ToFloat64(m.bytes.WithLabelValues("copied")); v != 100 {
		t.Errorf("copied = %v, want 100", v)
	}
	verified := []*ferryv1.DiskProgress{{SourceDisk: "vda", TotalBytes: 64, Verified: true}}
	r.Progress(&agentv1.JobProgress{Job: "migrationJobs/j", Epoch: 1, PhaseTimings: conv(100), Disks: verified})
	m.Session(true)
	var buf bytes.Buffer
	families, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	enc := expfmt.NewEncoder(&buf, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, f := range families {
		if err := enc.Encode(f); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []string{`ferry_agent_jobs{phase="converting"} 1`, `ferry_agent_rate_bytes_per_second{direction="copied"} 10`,
		`ferry_agent_session_connected 1`, `ferry_agent_cache_size_bytes`} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("the scrape lacks %s:\n%s", want, buf.String())
		}
	}
	r.Result(&agentv1.JobResult{Job: "migrationJobs/j", Epoch: 1, Outcome: agentv1.JobOutcome_JOB_OUTCOME_SUCCEEDED, PhaseTimings: conv(100), Disks: verified})
	if v := testutil.ToFloat64(m.bytes.WithLabelValues("verified")); v != 64 {
		t.Errorf("verified = %v, want 64 (once)", v)
	}
	if v := testutil.ToFloat64(m.results.WithLabelValues("succeeded")); v != 1 {
		t.Errorf("results{succeeded} = %v, want 1", v)
	}
	if s.progress != 3 || s.results != 1 {
		t.Errorf("passed on %d progress reports and %d results, want 3 and 1", s.progress, s.results)
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
