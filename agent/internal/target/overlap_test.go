package target

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
	"github.com/ferry-v2v/ferry/agent/internal/pipeline"
	"github.com/ferry-v2v/ferry/agent/internal/runner"
	"github.com/ferry-v2v/ferry/pkg/nbd"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/ratelimit"
	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// overlapSize and overlapData: the source disk of the overlap tests, and
// the data it holds (random, in runs, with holes between).
const (
	overlapSize = 96 << 20
	overlapData = 24 << 20
	dataRun     = 3 << 19 // one run of data, all in one 2 MiB chunk
)

// randomDisk writes a sparse raw disk of overlapSize with overlapData of
// random bytes in 1.5 MiB runs and serves it read-only.
func randomDisk(t *testing.T) (string, Endpoint) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "source.raw")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(overlapSize); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	run := make([]byte, dataRun)
	for off := int64(0); off < overlapData*4; off += 6 << 20 {
		for i := range run {
			run[i] = byte(rng.Uint32())
		}
		if _, err := f.WriteAt(run, off+64<<10); err != nil {
			t.Fatal(err)
		}
	}
	return path, serveImage(t, path, "raw")
}

// cacheSource is a source driver that copies a served image into the
// job's cache as the KVM driver does: cache image, checkpoint, pipeline,
// under the downstream limit. afterCopy, when set, runs once the copy of
// the disk is in the cache, before Convert returns.
type cacheSource struct {
	src       Endpoint
	afterCopy func(job *runner.Job)
	// Reads from gateAt on wait until gate is closed, when gate is set.
	gate   chan struct{}
	gateAt int64
}

// gatedSource holds reads past a point until its gate opens.
type gatedSource struct {
	pipeline.NBDSource
	gate   chan struct{}
	gateAt int64
}

func (g gatedSource) ReadAt(ctx context.Context, p []byte, off int64) error {
	if g.gate != nil && off+int64(len(p)) > g.gateAt {
		select {
		case <-g.gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return g.NBDSource.ReadAt(ctx, p, off)
}

func (s *cacheSource) Convert(ctx context.Context, job *runner.Job) error {
	c, err := nbd.Dial(ctx, "unix", s.src.Socket, nbd.Options{})
	if err != nil {
		return err
	}
	defer c.Close()
	name := job.Assignment.GetJob().GetTarget().GetDisks()[0].GetSourceDisk()
	img, err := cache.Open(ctx, job.CacheDir, name, c.Size(), true, job.Log)
	if err != nil {
		return err
	}
	defer img.Close()
	ckpt, err := pipeline.LoadCheckpoint(img.CheckpointPath(), c.Size(), pipeline.DefaultChunkSize)
	if err != nil {
		return err
	}
	_, err = pipeline.Copy(ctx, gatedSource{pipeline.NBDSource{Client: c}, s.gate, s.gateAt}, img, pipeline.Options{
		Limiter: job.Downstream, Checkpoint: ckpt, Logger: job.Log,
		Progress: func(done, total int64) {
			job.Progress.SetTotal(name, total)
			job.Progress.Set(name, done)
		},
	})
	if err != nil {
		return err
	}
	if s.afterCopy != nil {
		s.afterCopy(job)
	}
	return img.Close()
}

// noDomain is the real target driver but for CONFIGURING: no domain is
// defined. It keeps the upstream limiter the job ran under.
type noDomain struct {
	*Driver
	mu       sync.Mutex
	upstream *ratelimit.Limiter
}

func (n *noDomain) UploadBeside(ctx context.Context, job *runner.Job, converted <-chan struct{}) error {
	n.mu.Lock()
	n.upstream = job.Upstream
	n.mu.Unlock()
	return n.Driver.UploadBeside(ctx, job, converted)
}

func (n *noDomain) Configure(context.Context, *runner.Job) ([]string, error) { return nil, nil }

type results struct{ ch chan *agentv1.JobResult }

func (r results) Progress(*agentv1.JobProgress) {}
func (r results) Result(res *agentv1.JobResult) { r.ch <- res }

// overlapJob is one migration server, cache and storage for a job run
// by real runners, one after the other (an agent killed and started
// again).
type overlapJob struct {
	src        *cacheSource
	target     *noDomain
	cacheDir   string
	storage    string
	down, up   int64 // bits per second
	epoch      int64
	sourcePath string
	// onH2 places the VM on another host, h2 (placeOnH2); hosts are then
	// the two agents.
	onH2  bool
	hosts *twoHosts
	// fences are the writes the runner's fence confirmed.
	mu     sync.Mutex
	fences []string
}

// Confirm records a fenced write (runner.Fencer).
func (o *overlapJob) Confirm(_ context.Context, _ string, _ int64, write string) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.fences = append(o.fences, write)
	return nil
}

// ConfirmUndo records a fenced rollback (runner.Fencer).
func (o *overlapJob) ConfirmUndo(_ context.Context, _ string, _ int64, _ string) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.fences = append(o.fences, "undo")
	return nil
}

// migrationJob is the job the overlap tests run.
func (o *overlapJob) migrationJob() *ferryv1.MigrationJob {
	j := &ferryv1.MigrationJob{Name: "migrationJobs/ov1", SourceVm: "vm",
		Target: &ferryv1.TargetVm{Disks: []*ferryv1.TargetDisk{{SourceDisk: "vda", SizeBytes: overlapSize}}}}
	if o.onH2 {
		j.TargetHost = "hosts/h2"
	}
	return j
}

// placeOnH2 places the VM on another host, h2, whose agent's worker
// creates and serves the volume on o.storage; each start is a new driver
// on the migration server (its agent started again).
func (o *overlapJob) placeOnH2(t *testing.T) {
	o.onH2 = true
	o.hosts = newTwoHosts(t, o.migrationJob(), storage(ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_LOCAL, o.storage, "", ""), WorkerConfig{})
}

// uploadCheckpoint is the upload checkpoint of vda: of this host's volume
// or of h2's.
func (o *overlapJob) uploadCheckpoint() string {
	dir := filepath.Join(o.cacheDir, "ov1")
	if o.hosts != nil {
		return uploadCheckpointPath(dir, "vda", "hosts/h2")
	}
	return cache.UploadCheckpointPath(dir, "vda")
}

func newOverlapJob(t *testing.T) *overlapJob {
	requireTools(t, "qemu-img", "qemu-nbd")
	path, ep := randomDisk(t)
	return &overlapJob{src: &cacheSource{src: ep}, sourcePath: path, cacheDir: shortTempDir(t), storage: t.TempDir(),
		target: &noDomain{Driver: NewDriver("", Options{Log: testkit.Logger(t)})}}
}

// start runs the job on a new runner (a new agent) under the next epoch;
// stop interrupts that runner as an agent shutting down does.
func (o *overlapJob) start(t *testing.T) (results, func()) {
	t.Helper()
	res := results{ch: make(chan *agentv1.JobResult, 1)}
	if o.hosts != nil {
		o.target = &noDomain{Driver: o.hosts.newDriver(t, 30*time.Second)}
	}
	r := runner.New(runner.Config{DataDir: t.TempDir()}, runner.Deps{
		Drivers:  runner.Drivers{Sources: map[ferryv1.Platform]runner.Source{ferryv1.Platform_PLATFORM_KVM: o.src}, Target: o.target},
		Reporter: res, Logger: testkit.Logger(t), Fencer: o})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = r.Run(ctx) }()
	stop := sync.OnceFunc(func() { cancel(); <-done })
	t.Cleanup(stop)
	o.epoch++
	a := &agentv1.Assignment{
		Job:    o.migrationJob(),
		Epoch:  o.epoch,
		Source: &ferryv1.Source{Type: ferryv1.Platform_PLATFORM_KVM},
		MigrationServer: &ferryv1.MigrationServer{Name: "migrationServers/ms", CachePath: o.cacheDir,
			DownstreamBitsPerSecond: o.down, UpstreamBitsPerSecond: o.up},
		PrimaryStorage: storage(ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_LOCAL, o.storage, "", ""),
	}
	if err := r.Start(a); err != nil {
		t.Fatal(err)
	}
	return res, stop
}

func (o *overlapJob) volume() string { return filepath.Join(o.storage, "ov1", "vda.qcow2") }

func waitResult(t *testing.T, res results) *agentv1.JobResult {
	t.Helper()
	select {
	case r := <-res.ch:
		return r
	case <-time.After(3 * time.Minute):
		t.Fatal("no result within 3 minutes")
		return nil
	}
}

// timing returns the job's timing of phase.
func timing(t *testing.T, r *agentv1.JobResult, phase ferryv1.MigrationJobPhase) *ferryv1.PhaseTiming {
	t.Helper()
	for _, pt := range r.GetPhaseTimings() {
		if pt.GetPhase() == phase {
			return pt
		}
	}
	t.Fatalf("no %s timing in %v", phase, r.GetPhaseTimings())
	return nil
}

// uploadedChunks counts the chunks the upload checkpoint at ckpt has
// durably on the volume.
func uploadedChunks(t *testing.T, ckpt string) int {
	t.Helper()
	b, err := os.ReadFile(ckpt)
	if err != nil {
		return 0
	}
	m, err := decodeUploadMarks(b)
	if err != nil {
		t.Fatal(err)
	}
	return m.count()
}

// uploadedDataChunks counts the chunks holding data (one in three: the
// runs of randomDisk begin every 6 MiB) that the upload checkpoint has on
// the volume.
func uploadedDataChunks(t *testing.T, ckpt string) int {
	t.Helper()
	b, err := os.ReadFile(ckpt)
	if err != nil {
		return 0
	}
	m, err := decodeUploadMarks(b)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for i := 0; i < m.chunks(); i += 3 {
		if m.isDone(i) {
			n++
		}
	}
	return n
}

const (
	converting = ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONVERTING
	uploading  = ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_UPLOADING
)

// The upload runs beside the copy: chunks are on the volume before the
// copy has ended, and the volume ends identical to the source, whether
// the rounds run qemu-img or the agent's own copier, onto the volume
// through its qemu-nbd or straight into its file.
func TestUploadOverlapsTheCopy(t *testing.T) {
	for _, tc := range []struct {
		name              string
		byQemuImg, direct bool
	}{
		{"qemu-img", true, false},
		{"agent copier through qemu-nbd", false, false},
		{"agent copier into the file", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			useQemuImg, useDirect = tc.byQemuImg, tc.direct
			defer func() { useQemuImg, useDirect = true, true }()
			testUploadOverlapsTheCopy(t)
		})
	}
}

func testUploadOverlapsTheCopy(t *testing.T) {
	o := newOverlapJob(t)
	o.down = 8 << 20 * 8 // the copy takes about 3 s
	var duringCopy int
	o.src.afterCopy = func(*runner.Job) { duringCopy = uploadedChunks(t, o.uploadCheckpoint()) }
	res, _ := o.start(t)
	r := waitResult(t, res)
	if r.GetOutcome() != agentv1.JobOutcome_JOB_OUTCOME_SUCCEEDED {
		t.Fatalf("job %s: %s", r.GetOutcome(), r.GetReason())
	}
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "qcow2", o.sourcePath, o.volume())
	if duringCopy == 0 {
		t.Errorf("no chunk was on the volume when the copy ended")
	}
	conv, up := timing(t, r, converting), timing(t, r, uploading)
	if !up.GetStartTime().AsTime().Before(conv.GetEndTime().AsTime()) {
		t.Errorf("UPLOADING began at %v, after CONVERTING ended at %v", up.GetStartTime().AsTime(), conv.GetEndTime().AsTime())
	}
	if conv.GetBytes() != overlapData || up.GetBytes() != overlapData {
		t.Errorf("phase bytes: CONVERTING %d, UPLOADING %d, want %d each", conv.GetBytes(), up.GetBytes(), overlapData)
	}
	for _, d := range r.GetDisks() {
		if !d.GetVerified() {
			t.Errorf("disk %s not verified", d.GetSourceDisk())
		}
	}
	t.Logf("chunks on the volume when the copy ended: %d; timings %v", duringCopy, r.GetPhaseTimings())
}

// An agent stopped mid-overlap, with part of the disk in the cache and
// part of that on the volume, resumes both on its next start: the copy
// skips what the cache holds, the upload what the volume holds, and the
// volume ends identical to the source.
func TestOverlapResumesAfterTheAgentStopped(t *testing.T) {
	o := newOverlapJob(t)
	// The copy stops halfway until the agent is stopped.
	o.src.gate, o.src.gateAt = make(chan struct{}), overlapSize/2
	jobDir := filepath.Join(o.cacheDir, "ov1")
	res, stop := o.start(t)
	testkit.WaitFor(t, time.Minute, "data chunks on the volume", func() bool { return uploadedDataChunks(t, o.uploadCheckpoint()) >= 4 })
	stop()
	atStop := uploadedDataChunks(t, o.uploadCheckpoint())
	select {
	case r := <-res.ch:
		t.Fatalf("the stopped agent reported a result: %v", r)
	default:
	}
	marks, err := pipeline.ReadMarks(cache.CheckpointPath(jobDir, "vda"))
	if err != nil {
		t.Fatal(err)
	}
	if marks.Complete() {
		t.Fatalf("the copy was complete when the agent stopped; nothing to resume")
	}

	o.src.gate = nil
	res, _ = o.start(t)
	r := waitResult(t, res)
	if r.GetOutcome() != agentv1.JobOutcome_JOB_OUTCOME_SUCCEEDED {
		t.Fatalf("resumed job %s: %s", r.GetOutcome(), r.GetReason())
	}
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "qcow2", o.sourcePath, o.volume())
	up := timing(t, r, uploading)
	t.Logf("%d data chunks on the volume at the stop; the resumed run uploaded %d of %d data bytes", atStop, up.GetBytes(), overlapData)
	// Data chunks of the first run are not uploaded again.
	if want := overlapData - int64(atStop)*dataRun; up.GetBytes() != want {
		t.Errorf("the resumed upload wrote %d bytes, want %d: %d data chunks were on the volume already", up.GetBytes(), want, atStop)
	}
}

// The upstream limit holds for the upload beside the copy: every byte
// written to the volume went through the migration server's upstream
// bucket, and the upload took at least the time that bucket allows.
func TestOverlapUnderUpstreamLimit(t *testing.T) {
	o := newOverlapJob(t)
	const rate = 12 << 20 // bytes per second: 24 MiB take 2 s
	o.up = rate * 8
	res, _ := o.start(t)
	r := waitResult(t, res)
	if r.GetOutcome() != agentv1.JobOutcome_JOB_OUTCOME_SUCCEEDED {
		t.Fatalf("job %s: %s", r.GetOutcome(), r.GetReason())
	}
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "qcow2", o.sourcePath, o.volume())
	o.target.mu.Lock()
	lim := o.target.upstream
	o.target.mu.Unlock()
	up := timing(t, r, uploading)
	if lim.Rate() != o.up {
		t.Errorf("upstream limiter at %d bits/s, want %d", lim.Rate(), o.up)
	}
	if got := lim.Granted(); got < up.GetBytes() || up.GetBytes() != overlapData {
		t.Errorf("the upstream bucket let %d bytes through; the upload wrote %d of %d", got, up.GetBytes(), overlapData)
	}
	// The bucket starts full (one burst) and earns rate bytes a second.
	secs := up.GetEndTime().AsTime().Sub(up.GetStartTime().AsTime()).Seconds()
	if least := float64(up.GetBytes()-int64(lim.Burst())) / rate; secs < least {
		t.Errorf("the upload of %d bytes took %.2f s; the limit allows no less than %.2f s", up.GetBytes(), secs, least)
	}
	t.Logf("upload of %d bytes under %d B/s: %.2f s, %.0f B/s", up.GetBytes(), rate, secs, up.GetBytesPerSecond())
}

// TestVerifyBesideFindsACorruptedVolume: the read-back beside the upload
// (while the copy waits halfway) fails the job, naming the offset, when a
// byte of a chunk holding data on the volume differs from the source, and
// when a chunk the source holds as zeroes has data on the volume.
func TestVerifyBesideFindsACorruptedVolume(t *testing.T) {
	for _, tc := range []struct {
		name string
		off  int64
		want string
	}{
		{"flipped data", 64<<10 + 7, "the 2097152 bytes at offset 0 differ from the source: xxHash64"},
		{"data in a hole", 3 << 20, "the source read as zeroes, the target has data at offset 3145728"},
	} {
		for _, byQemuImg := range []bool{true, false} {
			t.Run(tc.name+map[bool]string{true: " qemu-img", false: " agent copier"}[byQemuImg], func(t *testing.T) {
				// qemu-img rounds upload onto a volume written through
				// qemu-nbd; the agent's copier, onto one written directly.
				useQemuImg, useDirect = byQemuImg, !byQemuImg
				var once sync.Once
				beforeVerifyBeside = func(ctx context.Context, f *follower) error {
					var err error
					once.Do(func() {
						if err = f.openTarget(ctx); err == nil {
							if err = f.sink().WriteAt(ctx, []byte{0x77}, tc.off); err == nil {
								err = f.sink().Flush(ctx)
							}
						}
					})
					return err
				}
				defer func() { useQemuImg, useDirect, beforeVerifyBeside = true, true, nil }()
				o := newOverlapJob(t)
				o.src.gate, o.src.gateAt = make(chan struct{}), overlapSize/2
				defer close(o.src.gate)
				res, _ := o.start(t)
				r := waitResult(t, res)
				if r.GetOutcome() != agentv1.JobOutcome_JOB_OUTCOME_FAILED || !strings.Contains(r.GetReason(), tc.want) ||
					!strings.Contains(r.GetReason(), "disk vda: volume "+o.volume()) {
					t.Fatalf("job %s: %q, want FAILED naming disk vda, its volume and %q", r.GetOutcome(), r.GetReason(), tc.want)
				}
			})
		}
	}
}

// The upload beside the copy takes the chunks from the copy's own buffers
// once the copy's checkpoint marks them durable in the cache: most of the
// data goes to the volume without being read back from the cache, and
// the volume ends identical to the source. With a feed too small for any
// chunk of data, every chunk of data is read from the cache instead, with
// the same result.
func TestUploadFromTheCopysBuffers(t *testing.T) {
	for _, small := range []bool{false, true} {
		t.Run(map[bool]string{false: "fed", true: "feed too small"}[small], func(t *testing.T) {
			if small {
				old := feedBytes
				feedBytes = 1 << 10
				defer func() { feedBytes = old }()
			}
			var mu sync.Mutex
			var fedBytes int64
			onFedRound = func(_ int, n int64) { mu.Lock(); fedBytes += n; mu.Unlock() }
			defer func() { onFedRound = nil }()
			o := newOverlapJob(t)
			o.down = 8 << 20 * 8
			res, _ := o.start(t)
			r := waitResult(t, res)
			if r.GetOutcome() != agentv1.JobOutcome_JOB_OUTCOME_SUCCEEDED {
				t.Fatalf("job %s: %s", r.GetOutcome(), r.GetReason())
			}
			run(t, "qemu-img", "compare", "-f", "raw", "-F", "qcow2", o.sourcePath, o.volume())
			if up := timing(t, r, uploading); up.GetBytes() != overlapData {
				t.Errorf("UPLOADING moved %d bytes, want %d", up.GetBytes(), overlapData)
			}
			if !r.GetDisks()[0].GetVerified() {
				t.Error("the volume was not verified")
			}
			// The verification beside the upload reports its progress:
			// the whole disk checked in the end.
			if v := r.GetDisks()[0].GetVerification(); v.GetDoneBytes() != overlapSize || v.GetTotalBytes() != overlapSize {
				t.Errorf("verification progress %d of %d bytes, want %d of %d", v.GetDoneBytes(), v.GetTotalBytes(), overlapSize, overlapSize)
			}
			mu.Lock()
			defer mu.Unlock()
			switch {
			case small && fedBytes != 0:
				t.Errorf("%d bytes went from a feed of 1 KiB, want 0", fedBytes)
			case !small && fedBytes < overlapData/2:
				t.Errorf("%d of %d bytes went from the copy's buffers, want at least half", fedBytes, overlapData)
			}
			t.Logf("bytes from the copy's buffers: %d of %d", fedBytes, overlapData)
		})
	}
}
