package runner

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/agent/internal/pipeline"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// copyDriver is a test-only source and target: it "copies" each disk in
// chunks, advancing a clock and reporting bytes, and records the calls.
type copyDriver struct {
	chunks int
	chunk  int64
	tick   func() // called after every chunk
	block  bool   // Convert waits for cancellation

	mu    sync.Mutex
	calls []string
}

func (d *copyDriver) record(call string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls = append(d.calls, call)
}

func (d *copyDriver) copy(ctx context.Context, j *Job) error {
	for _, disk := range j.Assignment.GetJob().GetTarget().GetDisks() {
		for range d.chunks {
			if err := ctx.Err(); err != nil {
				return err
			}
			j.Progress.Add(disk.GetSourceDisk(), d.chunk)
			if d.tick != nil {
				d.tick()
			}
		}
	}
	return nil
}

func (d *copyDriver) Convert(ctx context.Context, j *Job) error {
	d.record("convert")
	if d.block {
		<-ctx.Done()
		return ctx.Err()
	}
	return d.copy(ctx, j)
}

func (d *copyDriver) Upload(ctx context.Context, j *Job) error {
	d.record("upload")
	return d.copy(ctx, j)
}

func (d *copyDriver) Configure(_ context.Context, _ *Job) ([]string, error) {
	d.record("configure")
	return []string{"VM left stopped"}, nil
}

// recorder is a Reporter that keeps everything.
type recorder struct {
	mu       sync.Mutex
	progress []*agentv1.JobProgress
	results  chan *agentv1.JobResult
}

func newRecorder() *recorder { return &recorder{results: make(chan *agentv1.JobResult, 8)} }

func (r *recorder) Progress(p *agentv1.JobProgress) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.progress = append(r.progress, p)
}

func (r *recorder) Result(res *agentv1.JobResult) { r.results <- res }

func (r *recorder) result(t *testing.T) *agentv1.JobResult {
	t.Helper()
	select {
	case res := <-r.results:
		return res
	case <-time.After(5 * time.Second):
		t.Fatal("no result within 5s")
	}
	return nil
}

// fakeClock moves only when told.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func assignment(t *testing.T, job string, epoch int64, disks ...string) *agentv1.Assignment {
	a := &agentv1.Assignment{Epoch: epoch,
		Job:             &ferryv1.MigrationJob{Name: job, Target: &ferryv1.TargetVm{}},
		Source:          &ferryv1.Source{Type: ferryv1.Platform_PLATFORM_KVM},
		MigrationServer: &ferryv1.MigrationServer{CachePath: t.TempDir()}}
	for _, d := range disks {
		a.Job.Target.Disks = append(a.Job.Target.Disks, &ferryv1.TargetDisk{SourceDisk: d, SizeBytes: 1000})
	}
	return a
}

func startRunner(t *testing.T, cfg Config, deps Deps) *Runner {
	t.Helper()
	r := New(cfg, deps)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = r.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

func TestItineraryOrder(t *testing.T) {
	d := &copyDriver{chunks: 4, chunk: 250}
	rec := newRecorder()
	r := startRunner(t, Config{}, Deps{Drivers: Drivers{Sources: map[ferryv1.Platform]Source{ferryv1.Platform_PLATFORM_KVM: d}, Target: d}, Reporter: rec})
	if err := r.Start(assignment(t, "migrationJobs/a", 7, "vda")); err != nil {
		t.Fatal(err)
	}
	res := rec.result(t)
	if res.GetOutcome() != agentv1.JobOutcome_JOB_OUTCOME_SUCCEEDED || res.GetEpoch() != 7 || len(res.GetWarnings()) != 1 {
		t.Fatalf("result = %v", res)
	}
	if got := strings.Join(d.calls, ","); got != "convert,upload,configure" {
		t.Fatalf("calls = %s", got)
	}
	var phases []ferryv1.MigrationJobPhase
	for _, p := range rec.progress {
		if len(phases) == 0 || phases[len(phases)-1] != p.GetPhase() {
			phases = append(phases, p.GetPhase())
		}
	}
	want := []ferryv1.MigrationJobPhase{ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONVERTING,
		ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_UPLOADING, ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONFIGURING}
	if len(phases) != 3 || phases[0] != want[0] || phases[1] != want[1] || phases[2] != want[2] {
		t.Fatalf("phases reported = %v", phases)
	}
	if done := res.GetDisks()[0].GetDoneBytes(); done != 1000 {
		t.Fatalf("final disk done = %d, want 1000", done)
	}
}

func TestMissingDriverFailsClearly(t *testing.T) {
	rec := newRecorder()
	r := startRunner(t, Config{}, Deps{Reporter: rec})
	if err := r.Start(assignment(t, "migrationJobs/a", 1, "vda")); err != nil {
		t.Fatal(err)
	}
	res := rec.result(t)
	if res.GetOutcome() != agentv1.JobOutcome_JOB_OUTCOME_FAILED || !strings.Contains(res.GetReason(), "no KVM source driver in this build") {
		t.Fatalf("result = %v", res)
	}
	_, err := r.Inventory(context.Background(), &agentv1.InventoryRequest{Source: &ferryv1.Source{Type: ferryv1.Platform_PLATFORM_VMWARE}})
	if err == nil || err.Error() != "no VMware source driver in this build" {
		t.Fatalf("Inventory without a driver: %v", err)
	}
}

func TestCancellationAndStop(t *testing.T) {
	d := &copyDriver{block: true}
	rec := newRecorder()
	r := startRunner(t, Config{}, Deps{Drivers: Drivers{Sources: map[ferryv1.Platform]Source{ferryv1.Platform_PLATFORM_KVM: d}, Target: d}, Reporter: rec})
	for _, name := range []string{"migrationJobs/a", "migrationJobs/b"} {
		if err := r.Start(assignment(t, name, 2, "vda")); err != nil {
			t.Fatal(err)
		}
	}
	if r.Cancel("migrationJobs/a", 1, "old epoch") {
		t.Fatal("cancelled a job under another epoch")
	}
	if !r.Cancel("migrationJobs/a", 2, "operator asked") {
		t.Fatal("job a not cancelled")
	}
	if res := rec.result(t); res.GetJob() != "migrationJobs/a" || res.GetOutcome() != agentv1.JobOutcome_JOB_OUTCOME_CANCELLED || res.GetReason() != "operator asked" {
		t.Fatalf("result = %v", res)
	}
	if held := r.Held(); len(held) != 1 || held[0].GetJob() != "migrationJobs/b" || held[0].GetEpoch() != 2 {
		t.Fatalf("held = %v", held)
	}
	if n := r.StopAll("cut off"); n != 1 {
		t.Fatalf("StopAll stopped %d jobs", n)
	}
	if res := rec.result(t); res.GetOutcome() != agentv1.JobOutcome_JOB_OUTCOME_FAILED || res.GetReason() != "cut off" {
		t.Fatalf("result = %v", res)
	}
}

func TestDuplicateAssignmentRunsOnce(t *testing.T) {
	d := &copyDriver{chunks: 1, chunk: 1000}
	rec := newRecorder()
	r := startRunner(t, Config{}, Deps{Drivers: Drivers{Sources: map[ferryv1.Platform]Source{ferryv1.Platform_PLATFORM_KVM: d}, Target: d}, Reporter: rec})
	a := assignment(t, "migrationJobs/a", 3, "vda")
	if err := r.Start(a); err != nil {
		t.Fatal(err)
	}
	first := rec.result(t)
	if err := r.Start(a); err != nil {
		t.Fatal(err)
	}
	if again := rec.result(t); again != first {
		t.Fatalf("second start gave %v, want the remembered result", again)
	}
	if n := len(d.calls); n != 3 {
		t.Fatalf("driver called %d times, want one run (3 calls)", n)
	}
}

func TestShutdownInterruptsWithoutResult(t *testing.T) {
	d := &copyDriver{block: true}
	rec := newRecorder()
	r := New(Config{}, Deps{Drivers: Drivers{Sources: map[ferryv1.Platform]Source{ferryv1.Platform_PLATFORM_KVM: d}, Target: d}, Reporter: rec})
	if err := r.Start(assignment(t, "migrationJobs/a", 1, "vda")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := r.Run(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case res := <-rec.results:
		t.Fatalf("an interrupted job reported %v", res)
	default:
	}
	if err := r.Start(assignment(t, "migrationJobs/b", 1)); err != ErrNotRunning {
		t.Fatalf("Start after Run = %v, want ErrNotRunning", err)
	}
}

func TestProgressIsThrottled(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	// 100 chunks per phase, 100 ms apart: 10 s of copying in each of two
	// byte-counting phases.
	d := &copyDriver{chunks: 100, chunk: 10, tick: func() { clock.Add(100 * time.Millisecond) }}
	rec := newRecorder()
	r := startRunner(t, Config{ProgressInterval: time.Second}, Deps{Now: clock.Now, Reporter: rec,
		Drivers: Drivers{Sources: map[ferryv1.Platform]Source{ferryv1.Platform_PLATFORM_KVM: d}, Target: d}})
	if err := r.Start(assignment(t, "migrationJobs/a", 1, "vda")); err != nil {
		t.Fatal(err)
	}
	rec.result(t)
	// At most one report per second of the 20 s copied, plus one on
	// entering each of the three phases.
	if n := len(rec.progress); n > 20+3 || n < 10 {
		t.Fatalf("%d progress reports for 20 s of copying", n)
	}
	for i := 1; i < len(rec.progress); i++ {
		if rec.progress[i].GetPhase() == rec.progress[i-1].GetPhase() && rec.progress[i].GetDisks()[0].GetDoneBytes() == rec.progress[i-1].GetDisks()[0].GetDoneBytes() {
			t.Fatalf("report %d repeats report %d", i, i-1)
		}
	}
	last := rec.progress[len(rec.progress)-2] // the last UPLOADING report
	if rate := last.GetDisks()[0].GetBytesPerSecond(); rate < 90 || rate > 110 {
		t.Fatalf("rate = %.1f B/s, want about 100", rate)
	}
}

// verifyingDriver is a copyDriver whose target also verifies: it marks
// the disks in verified, and fails on the first one in bad.
type verifyingDriver struct {
	*copyDriver
	verified []string
	bad      string
}

func (d *verifyingDriver) Verify(_ context.Context, j *Job) error {
	d.record("verify")
	for _, disk := range d.verified {
		if disk == d.bad {
			return fmt.Errorf("disk %s: the 2097152 bytes at offset 4194304 differ from the source", disk)
		}
		j.Progress.SetVerified(disk)
	}
	return nil
}

// TestVerifyStep: verification runs between upload and configure; the
// disks it matched are reported verified, and a mismatch fails the job
// before any VM is defined, with the disk and offset in the reason.
func TestVerifyStep(t *testing.T) {
	for _, tc := range []struct {
		name, bad string
		calls     string
		outcome   agentv1.JobOutcome
	}{
		{"match", "", "convert,upload,verify,configure", agentv1.JobOutcome_JOB_OUTCOME_SUCCEEDED},
		{"mismatch", "vdb", "convert,upload,verify", agentv1.JobOutcome_JOB_OUTCOME_FAILED},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &verifyingDriver{copyDriver: &copyDriver{chunks: 2, chunk: 500}, verified: []string{"vda", "vdb"}, bad: tc.bad}
			rec := newRecorder()
			r := startRunner(t, Config{}, Deps{Drivers: Drivers{Sources: map[ferryv1.Platform]Source{ferryv1.Platform_PLATFORM_KVM: d}, Target: d}, Reporter: rec})
			if err := r.Start(assignment(t, "migrationJobs/v", 1, "vda", "vdb")); err != nil {
				t.Fatal(err)
			}
			res := rec.result(t)
			if got := strings.Join(d.calls, ","); got != tc.calls || res.GetOutcome() != tc.outcome {
				t.Fatalf("calls %s, outcome %s (%s); want %s, %s", got, res.GetOutcome(), res.GetReason(), tc.calls, tc.outcome)
			}
			disks := res.GetDisks()
			if tc.bad == "" {
				if len(disks) != 2 || !disks[0].GetVerified() || !disks[1].GetVerified() {
					t.Fatalf("disks = %v, want both verified", disks)
				}
				return
			}
			if want := "verify the target disks against the source: disk vdb: the 2097152 bytes at offset 4194304"; !strings.HasPrefix(res.GetReason(), want) {
				t.Fatalf("reason %q, want it to start with %q", res.GetReason(), want)
			}
			if !disks[0].GetVerified() || disks[1].GetVerified() {
				t.Fatalf("disks = %v, want vda verified and vdb not", disks)
			}
		})
	}
}

// limitsDriver blocks in Convert and hands over each job's limiters.
type limitsDriver struct {
	copyDriver
	jobs chan *Job
}

func (d *limitsDriver) Convert(ctx context.Context, j *Job) error {
	d.jobs <- j
	<-ctx.Done()
	return ctx.Err()
}

// A server's limits changed while its jobs run reach both of them at once
// (they share one bucket per direction) and no job of another server.
func TestSetLimitsReachesRunningJobs(t *testing.T) {
	d := &limitsDriver{jobs: make(chan *Job, 3)}
	r := startRunner(t, Config{}, Deps{Drivers: Drivers{Sources: map[ferryv1.Platform]Source{ferryv1.Platform_PLATFORM_KVM: d}, Target: d},
		Reporter: newRecorder()})
	jobs := map[string]*Job{}
	for _, x := range []struct{ job, server string }{{"migrationJobs/a", "migrationServers/m"}, {"migrationJobs/b", "migrationServers/m"},
		{"migrationJobs/c", "migrationServers/other"}} {
		a := assignment(t, x.job, 1, "vda")
		a.MigrationServer.Name = x.server
		if err := r.Start(a); err != nil {
			t.Fatal(err)
		}
		j := <-d.jobs
		jobs[j.Assignment.GetJob().GetName()] = j
	}
	a, b, c := jobs["migrationJobs/a"], jobs["migrationJobs/b"], jobs["migrationJobs/c"]
	if a.Downstream != b.Downstream || a.Upstream != b.Upstream || a.Downstream == c.Downstream || a.Downstream == a.Upstream {
		t.Fatal("jobs of one server do not share one bucket per direction, or share it with another server")
	}
	steps := []struct{ down, up int64 }{{64 << 20, 8 << 20}, {0, 16 << 20}, {0, 0}}
	for _, s := range steps {
		r.SetLimits(&agentv1.BandwidthLimits{MigrationServer: "migrationServers/m", DownstreamBitsPerSecond: s.down, UpstreamBitsPerSecond: s.up})
		if got := [2]int64{a.Downstream.Rate(), a.Upstream.Rate()}; got != [2]int64{s.down, s.up} {
			t.Errorf("after SetLimits(%d, %d) the running jobs' rates are %v", s.down, s.up, got)
		}
		if c.Downstream.Rate() != 0 || c.Upstream.Rate() != 0 {
			t.Errorf("another server's job got rates %d/%d", c.Downstream.Rate(), c.Upstream.Rate())
		}
	}
}

// TestMemoryReleasedWhenIdle: the memory jobs used is released once the
// last running job ends, not while another one still runs.
func TestMemoryReleasedWhenIdle(t *testing.T) {
	d := &copyDriver{block: true}
	rec := newRecorder()
	released := make(chan struct{}, 4)
	r := startRunner(t, Config{}, Deps{Drivers: Drivers{Sources: map[ferryv1.Platform]Source{ferryv1.Platform_PLATFORM_KVM: d}, Target: d},
		Reporter: rec, ReleaseMemory: func() { released <- struct{}{} }})
	for _, name := range []string{"migrationJobs/a", "migrationJobs/b"} {
		if err := r.Start(assignment(t, name, 1, "vda")); err != nil {
			t.Fatal(err)
		}
	}
	r.Cancel("migrationJobs/a", 1, "first")
	if res := rec.result(t); res.GetJob() != "migrationJobs/a" {
		t.Fatalf("result = %v", res)
	}
	r.Cancel("migrationJobs/b", 1, "second")
	if res := rec.result(t); res.GetJob() != "migrationJobs/b" {
		t.Fatalf("result = %v", res)
	}
	select {
	case <-released:
	case <-time.After(10 * time.Second):
		t.Fatal("memory not released after the last job ended")
	}
	if n := len(released); n != 0 {
		t.Fatalf("memory released %d more times: job a released it while b ran", n)
	}
}

// A mismatch found beside the upload fails the verification, as the
// verification step's would; any other upload error is the upload's.
func TestStepReason(t *testing.T) {
	mismatch := fmt.Errorf("disk vda: volume /v: %w", &pipeline.MismatchError{Offset: 4 << 20, Length: 2 << 20, Detail: "xxHash64 1, the source's 2"})
	if got, want := stepReason(uploadStep, mismatch), "verify the target disks against the source: disk vda: volume /v: the 2097152 bytes at offset 4194304 differ from the source"; !strings.HasPrefix(got, want) {
		t.Errorf("mismatch beside the upload: %q, want it to start with %q", got, want)
	}
	if got, want := stepReason(uploadStep, errors.New("volume gone")), "upload the disks to primary storage: volume gone"; got != want {
		t.Errorf("upload error: %q, want %q", got, want)
	}
}

// progressVerifier is a verifyingDriver that reports how far it has read
// back, a quarter of the disk a second.
type progressVerifier struct {
	*copyDriver
	clock *fakeClock
}

func (d *progressVerifier) Verify(_ context.Context, j *Job) error {
	j.Progress.Verifying("vda", 0, 1000)
	for k := int64(1); k <= 4; k++ {
		d.clock.Add(time.Second)
		j.Progress.Verifying("vda", k*250, 1000)
	}
	j.Progress.SetVerified("vda")
	return nil
}

// TestVerifyProgressIsReported: a verification's bytes checked, of those
// to check, and its rate reach the job's disk progress
// (DiskProgress.verification), the rate counted from its start.
func TestVerifyProgressIsReported(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	d := &progressVerifier{copyDriver: &copyDriver{chunks: 2, chunk: 500}, clock: clock}
	rec := newRecorder()
	r := startRunner(t, Config{}, Deps{Now: clock.Now, Reporter: rec,
		Drivers: Drivers{Sources: map[ferryv1.Platform]Source{ferryv1.Platform_PLATFORM_KVM: d}, Target: d}})
	if err := r.Start(assignment(t, "migrationJobs/vp", 1, "vda")); err != nil {
		t.Fatal(err)
	}
	res := rec.result(t)
	v := res.GetDisks()[0].GetVerification()
	if v.GetDoneBytes() != 1000 || v.GetTotalBytes() != 1000 || v.GetBytesPerSecond() != 250 || v.GetEta() != nil {
		t.Fatalf("verification = %v, want 1000 of 1000 bytes at 250 B/s and no ETA", v)
	}
	var seen bool
	for _, p := range rec.progress {
		if pv := p.GetDisks()[0].GetVerification(); pv != nil && pv.GetDoneBytes() < pv.GetTotalBytes() && pv.GetEta() != nil {
			seen = true
		}
	}
	if !seen {
		t.Error("no progress report showed the verification under way with an ETA")
	}
}

// rollbackDriver is a copyDriver whose Convert fails and that records
// rollbacks.
type rollbackDriver struct{ copyDriver }

func (d *rollbackDriver) Convert(_ context.Context, _ *Job) error {
	d.record("convert")
	return errors.New("source went away")
}

func (d *rollbackDriver) Rollback(_ context.Context, j *Job) error {
	d.record(fmt.Sprintf("rollback %s@%d", j.Name(), j.Epoch()))
	return nil
}

// undoFencer answers ConfirmUndo with err and records what it was asked.
type undoFencer struct {
	err   error
	mu    sync.Mutex
	asked []string
}

func (f *undoFencer) Confirm(context.Context, string, int64, string) error { return nil }

func (f *undoFencer) ConfirmUndo(_ context.Context, job string, epoch int64, _ string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked = append(f.asked, fmt.Sprintf("%s@%d", job, epoch))
	return f.err
}

// TestRollbackIsFenced: a job that failed is rolled back only once the
// leader said it was not assigned again since; a superseded assignment
// leaves the target to the new one.
func TestRollbackIsFenced(t *testing.T) {
	for _, tc := range []struct {
		name  string
		err   error
		calls string
	}{
		{"allowed", nil, "convert,rollback migrationJobs/a@4"},
		{"superseded", errors.New("target write refused: the assignment is stale: assignment superseded"), "convert"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &rollbackDriver{}
			f := &undoFencer{err: tc.err}
			rec := newRecorder()
			r := startRunner(t, Config{}, Deps{Drivers: Drivers{Sources: map[ferryv1.Platform]Source{ferryv1.Platform_PLATFORM_KVM: d}, Target: d},
				Reporter: rec, Fencer: f})
			if err := r.Start(assignment(t, "migrationJobs/a", 4, "vda")); err != nil {
				t.Fatal(err)
			}
			if res := rec.result(t); res.GetOutcome() != agentv1.JobOutcome_JOB_OUTCOME_FAILED || !strings.Contains(res.GetReason(), "source went away") {
				t.Fatalf("result = %v", res)
			}
			d.mu.Lock()
			calls := strings.Join(d.calls, ",")
			d.mu.Unlock()
			f.mu.Lock()
			asked := strings.Join(f.asked, ",")
			f.mu.Unlock()
			if calls != tc.calls || asked != "migrationJobs/a@4" {
				t.Fatalf("calls = %q, undo asked for %q; want %q and migrationJobs/a@4", calls, asked, tc.calls)
			}
		})
	}
}
