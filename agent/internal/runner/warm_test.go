package runner

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferry-v2v/ferry/agent/internal/pipeline"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// warmDriver is a test-only warm source and target: each round "changes"
// the bytes its script says, and the target records what it applied.
type warmDriver struct {
	copyDriver
	changes []int64 // bytes changed in rounds 2, 3, ...; 0 changes nothing
	fail    string  // "cutover" fails the final round's apply

	mu2     sync.Mutex
	prevs   []string
	applied []int64
	stopped bool
	ended   []bool // EndWarm's succeeded, per call
	rounds  int
}

func (d *warmDriver) Round(ctx context.Context, j *Job, prev string) (RoundResult, error) {
	d.mu2.Lock()
	defer d.mu2.Unlock()
	d.prevs = append(d.prevs, prev)
	d.rounds++
	token := fmt.Sprintf("t%d", d.rounds)
	if prev == "" {
		return RoundResult{Token: token, Disks: []DiskDelta{{Disk: "vda", ChangedBytes: 1000, ReadBytes: 1000}}}, nil
	}
	var n int64
	if i := len(d.prevs) - 2; i < len(d.changes) {
		n = d.changes[i]
	}
	dd := DiskDelta{Disk: "vda", Extents: []pipeline.Extent{}, ChangedBytes: n, ReadBytes: n}
	if n > 0 {
		dd.Extents = append(dd.Extents, pipeline.Extent{Offset: 0, Length: n})
	}
	return RoundResult{Token: token, Disks: []DiskDelta{dd}}, nil
}

func (d *warmDriver) StopSource(context.Context, *Job) error {
	d.mu2.Lock()
	defer d.mu2.Unlock()
	d.stopped = true
	return nil
}

func (d *warmDriver) EndWarm(_ context.Context, _ *Job, succeeded bool) error {
	d.mu2.Lock()
	defer d.mu2.Unlock()
	d.ended = append(d.ended, succeeded)
	return nil
}

func (d *warmDriver) ApplyDelta(_ context.Context, _ *Job, disks []DiskDelta, verify bool) (int64, error) {
	d.mu2.Lock()
	defer d.mu2.Unlock()
	var n int64
	for _, dd := range disks {
		for _, e := range dd.Extents {
			n += e.Length
		}
	}
	if verify && d.fail == "cutover" {
		return 0, fmt.Errorf("volume gone")
	}
	if n > 0 {
		d.applied = append(d.applied, n)
	}
	return n, nil
}

func warmAssignment(t *testing.T, interval time.Duration, cacheDir string) *agentv1.Assignment {
	a := assignment(t, "migrationJobs/w", 1, "vda")
	a.MigrationServer.CachePath = cacheDir
	a.Job.Options = &ferryv1.MigrationOptions{Mode: ferryv1.MigrationMode_MIGRATION_MODE_WARM, PrecopyInterval: durationpb.New(interval)}
	return a
}

// waitRounds waits until the job reported n rounds.
func waitRounds(t *testing.T, rec *recorder, n int) []*ferryv1.PrecopyRound {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		rec.mu.Lock()
		var rs []*ferryv1.PrecopyRound
		if len(rec.progress) > 0 {
			rs = rec.progress[len(rec.progress)-1].GetPrecopyRounds()
		}
		rec.mu.Unlock()
		if len(rs) >= n {
			return rs
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no %d rounds within 10s", n)
	return nil
}

// TestWarmRounds: a warm job walks the first round, upload and
// verification, then delta rounds every interval (one that changed
// nothing uploads nothing) until a cutover: the source stopped, a final
// verified round, CONFIGURING, the rounds and the measured downtime in the
// result, and EndWarm told the job succeeded.
func TestWarmRounds(t *testing.T) {
	d := &warmDriver{copyDriver: copyDriver{chunks: 1, chunk: 1000}, changes: []int64{300, 0, 50}}
	rec := newRecorder()
	r := startRunner(t, Config{}, Deps{Drivers: Drivers{Sources: map[ferryv1.Platform]Source{ferryv1.Platform_PLATFORM_KVM: d}, Target: d}, Reporter: rec})
	a := warmAssignment(t, 20*time.Millisecond, t.TempDir())
	if err := r.Start(a); err != nil {
		t.Fatal(err)
	}
	rs := waitRounds(t, rec, 3)
	if rs[0].GetNumber() != 1 || rs[0].GetChangedBytes() != 1000 || rs[1].GetChangedBytes() != 300 || rs[2].GetUploadedBytes() != 0 {
		t.Errorf("rounds = %v; want the full one, then 300 bytes, then nothing uploaded", rs)
	}
	if !r.Cutover(a.GetJob().GetName(), 1, time.Time{}) {
		t.Fatal("Cutover found no warm job")
	}
	res := rec.result(t)
	if res.GetOutcome() != agentv1.JobOutcome_JOB_OUTCOME_SUCCEEDED {
		t.Fatalf("result = %v", res)
	}
	rs = res.GetPrecopyRounds()
	last := rs[len(rs)-1]
	if !last.GetFinal() || !d.stopped || res.GetMeasuredDowntime() == nil {
		t.Errorf("final round %v, source stopped %v, downtime %v", last, d.stopped, res.GetMeasuredDowntime())
	}
	for i, r := range rs {
		if r.GetNumber() != int32(i+1) || r.GetEstimatedDowntime() == nil {
			t.Errorf("round %d = %v", i, r)
		}
	}
	if got := strings.Join(d.prevs, ","); !strings.HasPrefix(got, ",t1,t2,t3") {
		t.Errorf("rounds went on from %q; want each from the one before", got)
	}
	for _, n := range d.applied {
		if n == 0 {
			t.Errorf("an empty round was applied: %v", d.applied)
		}
	}
	if len(d.ended) != 1 || !d.ended[0] {
		t.Errorf("EndWarm calls = %v; want one, succeeded", d.ended)
	}
	if got := strings.Join(d.calls, ","); got != "upload,configure" {
		t.Errorf("calls = %s; want the first round's upload and the configure", got)
	}
}

// TestWarmResumeAndFailedCutover: a warm job assigned again after the
// agent stopped resumes after its last completed round, without a full
// copy or upload; a cutover that fails ends the job failed with EndWarm
// told so.
func TestWarmResumeAndFailedCutover(t *testing.T) {
	cache := t.TempDir()
	d := &warmDriver{copyDriver: copyDriver{chunks: 1, chunk: 1000}, changes: []int64{100, 100, 100, 100}}
	rec := newRecorder()
	r := New(Config{}, Deps{Drivers: Drivers{Sources: map[ferryv1.Platform]Source{ferryv1.Platform_PLATFORM_KVM: d}, Target: d}, Reporter: rec})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = r.Run(ctx) }()
	if err := r.Start(warmAssignment(t, 20*time.Millisecond, cache)); err != nil {
		t.Fatal(err)
	}
	waitRounds(t, rec, 2)
	cancel() // the agent shuts down: interrupted, no EndWarm
	<-done
	if len(d.ended) != 0 {
		t.Fatalf("EndWarm on shutdown: %v", d.ended)
	}
	d.mu2.Lock()
	before := len(d.prevs)
	d.calls, d.fail = nil, "cutover"
	d.mu2.Unlock()

	rec2 := newRecorder()
	r2 := startRunner(t, Config{}, Deps{Drivers: Drivers{Sources: map[ferryv1.Platform]Source{ferryv1.Platform_PLATFORM_KVM: d}, Target: d}, Reporter: rec2})
	a := warmAssignment(t, 20*time.Millisecond, cache)
	if err := r2.Start(a); err != nil {
		t.Fatal(err)
	}
	rs := waitRounds(t, rec2, 3)
	d.mu2.Lock()
	resumedFrom := d.prevs[before]
	d.mu2.Unlock()
	if resumedFrom == "" || rs[0].GetNumber() != 1 {
		t.Errorf("the resumed job began with a full round (prev %q), rounds %v", resumedFrom, rs)
	}
	r2.Cutover(a.GetJob().GetName(), 1, time.Time{})
	res := rec2.result(t)
	if res.GetOutcome() != agentv1.JobOutcome_JOB_OUTCOME_FAILED || !strings.Contains(res.GetReason(), "volume gone") {
		t.Fatalf("result = %v", res)
	}
	if len(d.ended) != 1 || d.ended[0] {
		t.Errorf("EndWarm calls = %v; want one, not succeeded", d.ended)
	}
	if strings.Contains(strings.Join(d.calls, ","), "upload") {
		t.Errorf("the resumed job uploaded again: %v", d.calls)
	}
}

// sinkDriver is a warmDriver whose target also takes the cutover's delta
// straight from the source (DeltaSinker) and defines the target VM ahead
// (CutoverConfigurer); events records the order of what happened.
type sinkDriver struct {
	warmDriver
	mu3     sync.Mutex
	events  []string
	written int64
}

func (d *sinkDriver) event(e string) {
	d.mu3.Lock()
	d.events = append(d.events, e)
	d.mu3.Unlock()
}

func (d *sinkDriver) Round(ctx context.Context, j *Job, prev string) (RoundResult, error) {
	res, err := d.warmDriver.Round(ctx, j, prev)
	sink := j.CutoverSink()
	if err != nil || sink == nil {
		return res, err
	}
	for i := range res.Disks {
		for _, e := range res.Disks[i].Extents {
			if err := sink.Write(ctx, res.Disks[i].Disk, e, make([]byte, e.Length)); err != nil {
				return res, err
			}
		}
		res.Disks[i].Forwarded = true
	}
	return res, nil
}

func (d *sinkDriver) StopSource(ctx context.Context, j *Job) error {
	d.event("stop")
	j.SourceStopped()
	return d.warmDriver.StopSource(ctx, j)
}

func (d *sinkDriver) ForwardsCutover() bool { return true }

func (d *sinkDriver) OpenDeltaSink(context.Context, *Job) (DeltaSink, error) {
	d.event("open sink")
	return sinkOf{d}, nil
}

func (d *sinkDriver) DefineAhead(context.Context, *Job) (bool, []string, error) {
	d.event("define ahead")
	return true, []string{"ahead"}, nil
}

func (d *sinkDriver) StartDefined(context.Context, *Job) ([]string, error) {
	d.event("start")
	return []string{"started"}, nil
}

type sinkOf struct{ d *sinkDriver }

func (s sinkOf) Write(_ context.Context, _ string, e pipeline.Extent, data []byte) error {
	s.d.mu3.Lock()
	defer s.d.mu3.Unlock()
	if s.d.events[len(s.d.events)-1] != "write" {
		s.d.events = append(s.d.events, "write")
	}
	s.d.written += int64(len(data))
	return nil
}

func (s sinkOf) Finish(context.Context) (int64, error) {
	s.d.event("finish")
	s.d.mu3.Lock()
	defer s.d.mu3.Unlock()
	return s.d.written, nil
}

func (s sinkOf) Close() error { s.d.event("close"); return nil }

// TestWarmCutoverAhead: the cutover opens the target's sink and defines
// the target VM before it stops the source; the last delta goes through
// the sink (which verifies it), not through ApplyDelta; CONFIGURING only starts the
// VM, and the warnings of both reach the result.
func TestWarmCutoverAhead(t *testing.T) {
	// The cutover comes at once: its round, the second, changes 700 bytes.
	d := &sinkDriver{warmDriver: warmDriver{copyDriver: copyDriver{chunks: 1, chunk: 1000}, changes: []int64{700}}}
	rec := newRecorder()
	r := startRunner(t, Config{}, Deps{Drivers: Drivers{Sources: map[ferryv1.Platform]Source{ferryv1.Platform_PLATFORM_KVM: d}, Target: d}, Reporter: rec})
	a := warmAssignment(t, time.Hour, t.TempDir())
	a.Job.Options.CutoverTime = timestamppb.Now()
	if err := r.Start(a); err != nil {
		t.Fatal(err)
	}
	res := rec.result(t)
	if res.GetOutcome() != agentv1.JobOutcome_JOB_OUTCOME_SUCCEEDED {
		t.Fatalf("result = %v", res)
	}
	if got, want := strings.Join(d.events, ","), "open sink,define ahead,stop,write,finish,close,start"; got != want {
		t.Errorf("events = %s; want %s", got, want)
	}
	rs := res.GetPrecopyRounds()
	if last := rs[len(rs)-1]; !last.GetFinal() || last.GetUploadedBytes() != 700 {
		t.Errorf("final round = %v; want 700 bytes uploaded through the sink", last)
	}
	if len(d.applied) != 0 {
		t.Errorf("ApplyDelta wrote %v; the cutover's delta went through the sink", d.applied)
	}
	if got := strings.Join(d.calls, ","); got != "upload" {
		t.Errorf("calls = %s; want the first round's upload only (CONFIGURING started the VM defined ahead)", got)
	}
	if w := strings.Join(res.GetWarnings(), ","); w != "ahead,started" {
		t.Errorf("warnings = %q; want those of the definition and the start", w)
	}
	if res.GetMeasuredDowntime() == nil || len(d.ended) != 1 || !d.ended[0] {
		t.Errorf("downtime %v, EndWarm calls %v", res.GetMeasuredDowntime(), d.ended)
	}
}
