package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferry-v2v/ferry/agent/internal/pipeline"
	"github.com/ferry-v2v/ferry/pkg/durable"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// Warm migration (options.mode WARM): the first round copies the whole
// source while it runs (CONVERTING, UPLOADING as for any job), then the
// job stays in SYNCING, copying every precopy interval only what changed
// into the cache and on to the target volumes, until its cutover stops the
// source, moves the last delta, verifies it and CONFIGURING starts the
// target. The contract with the drivers is Warmer (source) and
// DeltaApplier (target).

// Warmer is what a source driver may also do: copy a running VM in rounds.
// It is the whole contract between the runner and a source's change
// tracking (KVM dirty bitmaps, VMware changed-block tracking):
//
//   - Round(ctx, job, prev) copies into the job's cache images (the images
//     Convert fills) what changed on the source since the round that
//     returned the token prev, and returns the ranges it rewrote per disk
//     with a new token. prev "" asks for the first round, a full copy as
//     Convert makes it (with the cache checkpoints and checksums the
//     upload and verification use); it must not reuse a cache an earlier,
//     unfinished first round left, whose data would be of another point in
//     time. The token is opaque to the runner (a checkpoint name, change
//     ids); the runner keeps it in the cache directory once the round's
//     data is on the target, and a restarted job calls Round again with
//     the last completed round's token. So a round must be repeatable from
//     prev however far an earlier attempt of it got, and the source must
//     keep what prev needs until EndWarm.
//   - StopSource stops the source VM for the cutover; the runner then runs
//     one last Round, which must see every write made before the stop.
//   - EndWarm removes what rounds keep on the source (checkpoints,
//     snapshots) and settles a source StopSource stopped: succeeded says
//     the target VM took over; otherwise the source should run again.
//     The runner calls it once the job ended, whatever the outcome, but
//     not when the agent shuts down (the job resumes); it must be
//     idempotent.
type Warmer interface {
	Round(ctx context.Context, job *Job, prev string) (RoundResult, error)
	StopSource(ctx context.Context, job *Job) error
	EndWarm(ctx context.Context, job *Job, succeeded bool) error
}

// RoundResult is what one precopy round copied.
type RoundResult struct {
	// Token names the source's state as of this round, for the next one.
	Token string
	// Disks has one entry per disk of the job.
	Disks []DiskDelta
}

// DiskDelta is what a round rewrote in one disk's cache image.
type DiskDelta struct {
	Disk string
	// Extents are the ranges rewritten in the cache image, in order and
	// apart; Zero ones read as zeroes now. Empty when nothing changed;
	// nil in a first round, whose upload takes the whole image.
	Extents []pipeline.Extent
	// ChangedBytes are the bytes the source reported changed (every data
	// byte in a first round), ReadBytes those read from it (the changes
	// rounded out to the cache's granule).
	ChangedBytes, ReadBytes int64
	// Forwarded: the extents went to the job's CutoverSink, not the cache.
	Forwarded bool
}

// DeltaApplier is what a target driver may also do for a warm job: write
// the extents a round rewrote in the cache images onto the target volumes
// that the first round's upload made, under the upstream limit, and with
// verify read them back and compare them with the cache. A round with no
// extents must cost no upload. It returns the bytes written.
type DeltaApplier interface {
	ApplyDelta(ctx context.Context, job *Job, disks []DiskDelta, verify bool) (int64, error)
}

// Defaults of warm jobs.
const (
	// DefaultPrecopyInterval applies when the assignment carries none
	// (the coordinator stamps Settings.precopy_interval).
	DefaultPrecopyInterval = 30 * time.Minute
	// configureEstimate is the CONFIGURING time a downtime estimate adds
	// before the job has measured one.
	configureEstimate = 10 * time.Second
)

// IsWarm reports whether a job runs precopy rounds.
func (j *Job) IsWarm() bool {
	return j.Assignment.GetJob().GetOptions().GetMode() == ferryv1.MigrationMode_MIGRATION_MODE_WARM
}

// warmState is a warm job's rounds: in memory and, once a round's data is
// on the target, in warm.json of the cache directory.
type warmState struct {
	mu        sync.Mutex
	cutoverAt time.Time // zero: wait for a cutover request
	wake      chan struct{}

	saved      savedRounds
	first      *ferryv1.PrecopyRound // the first round, until its upload is verified
	firstToken string
	stoppedAt  time.Time // when the source stopped (SourceStopped)
	downtime   time.Duration
	sink       DeltaSink // the cutover round's, while it runs
	defined    bool      // the cutover defined the target VM ahead
	warnings   []string  // of DefineAhead and of the cutover (Warn)
}

// savedRounds is warm.json.
type savedRounds struct {
	// Round is the last round whose data is on the target; Token its token.
	Round  int32             `json:"round"`
	Token  string            `json:"token"`
	Rounds []json.RawMessage `json:"rounds"` // PrecopyRound in protojson
}

const warmFile = "warm.json"

func newWarmState(j *Job) *warmState {
	w := &warmState{wake: make(chan struct{}, 1)}
	if t := j.Assignment.GetJob().GetOptions().GetCutoverTime(); t != nil {
		w.cutoverAt = t.AsTime()
	}
	return w
}

// SetCutover sets when the job cuts over; zero or past means now.
func (w *warmState) SetCutover(at time.Time) {
	w.mu.Lock()
	if at.IsZero() {
		at = time.Unix(1, 0)
	}
	w.cutoverAt = at
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *warmState) cutover() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.cutoverAt
}

// load reads warm.json; a missing file is no round done.
func (w *warmState) load(dir string, p *Progress) error {
	b, err := os.ReadFile(filepath.Join(dir, warmFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var s savedRounds
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("%s: %w", warmFile, err)
	}
	for _, raw := range s.Rounds {
		r := &ferryv1.PrecopyRound{}
		if err := protojson.Unmarshal(raw, r); err != nil {
			return fmt.Errorf("%s: %w", warmFile, err)
		}
		p.addRound(r)
	}
	w.saved = s
	return nil
}

// save records a round whose data is on the target.
func (w *warmState) save(dir string, r *ferryv1.PrecopyRound, token string) error {
	raw, err := protojson.Marshal(r)
	if err != nil {
		return err
	}
	s := w.saved
	s.Round, s.Token, s.Rounds = r.GetNumber(), token, append(append([]json.RawMessage(nil), s.Rounds...), raw)
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	if err := durable.WriteFile(filepath.Join(dir, warmFile), b, 0o600); err != nil {
		return fmt.Errorf("record precopy round %d: %w", r.GetNumber(), err)
	}
	w.saved = s
	return nil
}

// warmItinerary is a warm job's order: the first round as CONVERTING,
// UPLOADING and its verification (skipped when a restarted job finds
// that round done), the rounds of SYNCING, the cutover, CONFIGURING.
var warmItinerary = []step{
	{ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONVERTING, "prepare the cache directory", false, prepareWarm, nil},
	{ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONVERTING, "copy the source disks to the cache (precopy round 1)", true, firstRound, nil},
	{ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_UPLOADING, uploadStep, true, unlessResumed(upload), nil},
	{ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_UPLOADING, verifyStep, false, unlessResumed(verifyFirst), nil},
	{ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_SYNCING, "precopy rounds", false, syncRounds, nil},
	{ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_SYNCING, "cut over (define the target VM, stop the source, copy and verify the last delta)", false, cutover, nil},
	{ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONFIGURING, "start the target VM (defining it unless the cutover did)", false, configureWarm, nil},
}

func warmerOf(d Drivers, j *Job) (Warmer, DeltaApplier, error) {
	platform := j.Assignment.GetSource().GetType()
	w, ok := d.Sources[platform].(Warmer)
	if !ok {
		return nil, nil, &NoDriverError{What: "warm " + platformName(platform) + " source"}
	}
	a, ok := d.Target.(DeltaApplier)
	if !ok {
		return nil, nil, &NoDriverError{What: "warm target"}
	}
	return w, a, nil
}

func prepareWarm(ctx context.Context, d Drivers, j *Job) ([]string, error) {
	if _, _, err := warmerOf(d, j); err != nil {
		return nil, err
	}
	if _, err := prepareCache(ctx, d, j); err != nil {
		return nil, err
	}
	if err := j.warm.load(j.CacheDir, j.Progress); err != nil {
		return nil, err
	}
	if r := j.warm.saved.Round; r > 0 {
		j.Log.Info("warm job resumes after its last completed round", "round", r)
	}
	return nil, nil
}

// resumed: the first round's data is already on the target.
func (j *Job) resumed() bool { return j.warm.saved.Round > 0 }

func unlessResumed(do func(ctx context.Context, d Drivers, j *Job) ([]string, error)) func(ctx context.Context, d Drivers, j *Job) ([]string, error) {
	return func(ctx context.Context, d Drivers, j *Job) ([]string, error) {
		if j.resumed() {
			return nil, nil
		}
		return do(ctx, d, j)
	}
}

func firstRound(ctx context.Context, d Drivers, j *Job) ([]string, error) {
	if j.resumed() {
		return nil, nil
	}
	w, _, _ := warmerOf(d, j)
	if o, ok := d.Target.(Overlapper); ok {
		j.startBeside(ctx, o)
	}
	start := time.Now()
	res, err := w.Round(ctx, j, "")
	if err != nil {
		return nil, err
	}
	j.warm.first = roundOf(1, start, res, 0, false)
	j.warm.firstToken = res.Token
	return nil, nil
}

// verifyFirst verifies the upload of the first round, then records it.
func verifyFirst(ctx context.Context, d Drivers, j *Job) ([]string, error) {
	if _, err := verify(ctx, d, j); err != nil {
		return nil, err
	}
	r := j.warm.first
	r.UploadedBytes = r.GetReadBytes()
	j.estimate(r)
	if err := j.warm.save(j.CacheDir, r, j.warm.firstToken); err != nil {
		return nil, err
	}
	j.Progress.addRound(r)
	return nil, nil
}

func roundOf(n int32, start time.Time, res RoundResult, uploaded int64, final bool) *ferryv1.PrecopyRound {
	end := time.Now()
	r := &ferryv1.PrecopyRound{Number: n, StartTime: timestamppb.New(start), EndTime: timestamppb.New(end),
		Duration: durationpb.New(end.Sub(start)), UploadedBytes: uploaded, Final: final}
	for _, d := range res.Disks {
		r.ChangedBytes += d.ChangedBytes
		r.ReadBytes += d.ReadBytes
	}
	return r
}

// estimate sets r's estimated downtime: its bytes over the rate the
// rounds so far moved data at (source read and target write in turn),
// plus CONFIGURING.
func (j *Job) estimate(r *ferryv1.PrecopyRound) {
	var bytes int64
	var secs float64
	for _, p := range append(j.Progress.Rounds(), r) {
		bytes += p.GetReadBytes()
		secs += p.GetDuration().AsDuration().Seconds()
	}
	est := configureEstimate
	if bytes > 0 && secs > 0 {
		est += time.Duration(float64(r.GetReadBytes()) / (float64(bytes) / secs) * float64(time.Second))
	}
	r.EstimatedDowntime = durationpb.New(est)
}

// interval is the job's time between rounds.
func (j *Job) interval() time.Duration {
	if d := j.Assignment.GetJob().GetOptions().GetPrecopyInterval().AsDuration(); d > 0 {
		return d
	}
	return DefaultPrecopyInterval
}

// syncRounds runs a round every interval until the cutover is due.
func syncRounds(ctx context.Context, d Drivers, j *Job) ([]string, error) {
	w, a, _ := warmerOf(d, j)
	last := time.Now()
	for {
		next := last.Add(j.interval())
		at := j.warm.cutover()
		if !at.IsZero() && !at.After(next) {
			if err := sleepUntil(ctx, j.warm.wake, at); err != nil {
				return nil, err
			}
			if !j.warm.cutover().After(time.Now()) {
				return nil, nil
			}
			continue // moved later
		}
		if err := sleepUntil(ctx, j.warm.wake, next); err != nil {
			return nil, err
		}
		if time.Now().Before(next) {
			continue // woken by a cutover request
		}
		if _, err := j.round(ctx, w, a, false, nil); err != nil {
			return nil, err
		}
		last = time.Now()
	}
}

// sleepUntil waits for t, a wake-up or the end of ctx.
func sleepUntil(ctx context.Context, wake <-chan struct{}, t time.Time) error {
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-wake:
	case <-timer.C:
	}
	return nil
}

// round runs one delta round: the source's changes into the cache, then
// on to the target (or straight to the target through sink, the
// cutover's), then recorded.
func (j *Job) round(ctx context.Context, w Warmer, a DeltaApplier, final bool, sink DeltaSink) (*ferryv1.PrecopyRound, error) {
	n := j.warm.saved.Round + 1
	start := time.Now()
	res, err := w.Round(ctx, j, j.warm.saved.Token)
	if err != nil {
		return nil, fmt.Errorf("precopy round %d: %w", n, err)
	}
	var up int64
	var cached []DiskDelta
	for _, dd := range res.Disks {
		if !dd.Forwarded {
			cached = append(cached, dd)
		}
	}
	if len(cached) < len(res.Disks) {
		if sink == nil {
			return nil, fmt.Errorf("precopy round %d: the source forwarded its delta, but the round has no sink", n)
		}
		if up, err = sink.Finish(ctx); err != nil {
			return nil, fmt.Errorf("precopy round %d onto the target: %w", n, err)
		}
	}
	if len(cached) > 0 && sink != nil {
		// What the source did not forward goes from the cache onto
		// volumes the sink must let go of first.
		if err := sink.Close(); err != nil {
			return nil, fmt.Errorf("precopy round %d: release the target volumes: %w", n, err)
		}
	}
	applied, err := a.ApplyDelta(ctx, j, cached, final)
	if err != nil {
		return nil, fmt.Errorf("precopy round %d onto the target: %w", n, err)
	}
	up += applied
	r := roundOf(n, start, res, up, final)
	j.estimate(r)
	if err := j.warm.save(j.CacheDir, r, res.Token); err != nil {
		return nil, err
	}
	j.Progress.addRound(r)
	j.Log.Info("precopy round done", "round", n, "changed_bytes", r.GetChangedBytes(), "read_bytes", r.GetReadBytes(),
		"uploaded_bytes", up, "seconds", r.GetDuration().AsDuration().Seconds(), "final", final)
	return r, nil
}

// endWarm removes what the rounds kept on the source, with its own
// deadline: the job's context has usually ended.
func (r *Runner) endWarm(j *Job, succeeded bool) {
	w, ok := r.drivers.Sources[j.Assignment.GetSource().GetType()].(Warmer)
	if !ok || !j.IsWarm() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), rollbackTimeout)
	defer cancel()
	if err := w.EndWarm(ctx, j, succeeded); err != nil {
		j.Log.Error("remove the source's change tracking (the janitor tries again)", "err", err)
	}
	// The rounds' tokens are gone with the change tracking: a restart
	// begins with a full round.
	if err := os.Remove(filepath.Join(j.CacheDir, warmFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		j.Log.Warn("remove the record of the precopy rounds", "err", err)
	}
}
