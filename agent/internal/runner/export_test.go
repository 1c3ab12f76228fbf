package runner

import (
	"context"
	"errors"
	"strings"
	"testing"

	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// fakeExporter writes nothing; it records its calls and fails when told.
type fakeExporter struct {
	d    *copyDriver
	fail error
}

func (e *fakeExporter) Export(ctx context.Context, j *Job) error {
	e.d.record("export")
	if e.fail != nil {
		return e.fail
	}
	return e.d.copy(ctx, j)
}

func (e *fakeExporter) Discard(_ context.Context, _ *Job) error {
	e.d.record("discard")
	return nil
}

// TestExportItinerary: an export job copies to the cache and writes its
// bundle (CONVERTING, then EXPORTING), never touching the target; one
// that fails is discarded, not rolled back on a target.
func TestExportItinerary(t *testing.T) {
	for _, tc := range []struct {
		name    string
		fail    error
		calls   string
		outcome agentv1.JobOutcome
	}{
		{"succeeds", nil, "convert,export", agentv1.JobOutcome_JOB_OUTCOME_SUCCEEDED},
		{"fails", errors.New("disk full"), "convert,export,discard", agentv1.JobOutcome_JOB_OUTCOME_FAILED},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &copyDriver{chunks: 2, chunk: 500}
			rec := newRecorder()
			r := startRunner(t, Config{}, Deps{Drivers: Drivers{Sources: map[ferryv1.Platform]Source{ferryv1.Platform_PLATFORM_KVM: d},
				Target: d, Exporter: &fakeExporter{d: d, fail: tc.fail}}, Reporter: rec})
			a := assignment(t, "migrationJobs/x", 1, "vda")
			a.Job.Export = &ferryv1.ExportSpec{BundleName: "x"}
			if err := r.Start(a); err != nil {
				t.Fatal(err)
			}
			res := rec.result(t)
			if res.GetOutcome() != tc.outcome || (tc.fail != nil && res.GetReason() != "write the bundle: disk full") {
				t.Fatalf("result = %v", res)
			}
			d.mu.Lock()
			calls := strings.Join(d.calls, ",")
			d.mu.Unlock()
			if calls != tc.calls {
				t.Errorf("calls = %s, want %s", calls, tc.calls)
			}
			var phases []string
			for _, p := range res.GetPhaseTimings() {
				phases = append(phases, p.GetPhase().String())
			}
			if strings.Join(phases, ",") != "MIGRATION_JOB_PHASE_CONVERTING,MIGRATION_JOB_PHASE_EXPORTING" {
				t.Errorf("phases = %v", phases)
			}
		})
	}
}
