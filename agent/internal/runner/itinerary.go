package runner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"path/filepath"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
	"github.com/ferry-v2v/ferry/agent/internal/pipeline"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/ratelimit"
	"github.com/ferry-v2v/ferry/pkg/targetspec"
)

// Source is a source driver: it copies a job's source disks into the
// cache (CONVERTING), reporting bytes through job.Progress.
type Source interface {
	Convert(ctx context.Context, job *Job) error
}

// Lister is what a source driver may also do: read the inventory of a
// source (its VMs and what they run on), for the coordinator's sync.
type Lister interface {
	Inventory(ctx context.Context, req *agentv1.InventoryRequest) (*ferryv1.SourceInventory, error)
}

// Target is the target driver: it moves the cached disks to primary
// storage (UPLOADING) and defines the target VM (CONFIGURING). Configure
// returns warnings the operator should see on a job that succeeded.
type Target interface {
	Upload(ctx context.Context, job *Job) error
	Configure(ctx context.Context, job *Job) (warnings []string, err error)
}

// Overlapper is what a target driver may also do: upload beside
// CONVERTING what the copy has made durable in the cache, so that a job
// takes about as long as the slower of copy and upload rather than their
// sum. converted is closed once CONVERTING has succeeded (every cache
// checkpoint is then complete); UploadBeside returns once every disk is
// on its volume, or with what stopped it. The runner starts it with the
// copy and waits for it as the UPLOADING step; an error while the copy
// still runs fails the job at once.
type Overlapper interface {
	UploadBeside(ctx context.Context, job *Job, converted <-chan struct{}) error
}

// Verifier is what a target driver may also do: read the uploaded
// volumes back and compare them with the checksums CONVERTING recorded,
// calling job.Progress.SetVerified for each disk that matched. A disk
// without checksums (a source driver that records none) is left
// unverified; a disk that differs is an error naming it and the offset.
type Verifier interface {
	Verify(ctx context.Context, job *Job) error
}

// Preparer adapts the guest on the cache images to KVM (PREPARING): it
// reads the images CONVERTING made and leaves what UPLOADING must upload
// beside them (cache.PreparedPath), never changing the cache images
// themselves, so a job whose conversion failed restarts from an intact
// cache. It returns what it found and changed.
type Preparer interface {
	Prepare(ctx context.Context, job *Job) (*ferryv1.GuestInspection, error)
}

// Rollbacker is what a target driver may also do: undo what a job made
// on the target (domain, volumes, DHCP entries) after it failed or was
// cancelled in any phase. It must be idempotent and work from the
// assignment alone. The cache is kept, so a restart reuses it.
type Rollbacker interface {
	Rollback(ctx context.Context, job *Job) error
}

// Exporter writes an export job's bundle (EXPORTING) from the cache:
// each disk in the export's format, checked against the cache, with its
// signed ferry-bundle.json, under a temporary name renamed once whole.
// Discard removes what a failed or cancelled export left at the
// destination; it must be idempotent and work from the assignment alone.
type Exporter interface {
	Export(ctx context.Context, job *Job) error
	Discard(ctx context.Context, job *Job) error
}

// Drivers is the registry of drivers in this build: source drivers by the
// source's platform, and the target driver. A job whose driver is missing
// fails with a reason that says so.
type Drivers struct {
	Sources map[ferryv1.Platform]Source
	Target  Target
	// Exporter runs export jobs' EXPORTING; nil fails them.
	Exporter Exporter
	// Preparer converts guests in PREPARING; a job that asks for a
	// conversion fails without it.
	Preparer Preparer
}

// NoDriverError says this build has no driver a job needs.
type NoDriverError struct {
	// What names the driver, e.g. "KVM source" or "target".
	What string
}

func (e *NoDriverError) Error() string { return "no " + e.What + " driver in this build" }

// Job is what the drivers see of one assignment.
type Job struct {
	// Assignment is the job with everything needed to run it, secrets
	// included: never log it.
	Assignment *agentv1.Assignment
	// CacheDir is this job's directory in the migration server's cache.
	CacheDir string
	// Progress takes the drivers' byte counts.
	Progress *Progress
	// Log carries the job's name and epoch.
	Log *slog.Logger
	// Downstream limits source → cache bytes and Upstream cache → target
	// bytes; both are shared by every job of the migration server.
	Downstream, Upstream *ratelimit.Limiter

	// bootVerifiedBy is how the target VM showed it booted; see
	// SetBootVerifiedBy.
	bootVerifiedBy string
	// inspection is what PREPARING found and changed.
	inspection *ferryv1.GuestInspection

	warm    *warmState // a warm job's rounds and cutover
	watches *watchSet  // see Watch
	beside  *beside    // the upload beside CONVERTING, when the target overlaps
	// fencer confirms the assignment before target writes; nil confirms
	// everything (unit tests without a coordinator).
	fencer Fencer
}

// Fencer confirms with the coordinators' leader that an assignment is still
// the job's current one (session.Fences): Confirm before a target write,
// ConfirmUndo before the rollback of a job that ended here, which only a
// newer assignment of the job with its target on the same host forbids.
type Fencer interface {
	Confirm(ctx context.Context, job string, epoch int64, write string) error
	ConfirmUndo(ctx context.Context, job string, epoch int64, targetHost string) error
}

// Fence must be called by a target driver right before each write to the
// target (volume creation, upload, domain definition): it returns nil once
// the leader confirmed that this assignment is still current, and an error
// when it is not (the job was failed, cancelled or reassigned while this
// agent was cut off), or when ctx ends while the leader cannot be reached.
func (j *Job) Fence(ctx context.Context, write string) error {
	if j.fencer == nil {
		return nil
	}
	return j.fencer.Confirm(ctx, j.Name(), j.Epoch(), write)
}

// SetBootVerifiedBy records, for a job with options.verify_boot, how
// the target VM's guest showed it booted (JobResult.boot_verified_by).
func (j *Job) SetBootVerifiedBy(by string) { j.bootVerifiedBy = by }

// ConvertsGuest says whether the job adapts the guest in PREPARING: its
// options.guest_conversion, where AUTO (or unset) is on for a VMware source
// and off for a KVM one.
//
// A warm job is never converted: its target volumes follow the source
// round by round, which a converted guest would no longer match (the
// admission refuses guest_conversion ON with mode WARM). Nor is an
// export, whose bundle holds the source's disks as they are.
func (j *Job) ConvertsGuest() bool {
	if j.IsWarm() || j.IsExport() {
		return false
	}
	return targetspec.ConvertsGuest(j.Assignment.GetJob().GetOptions().GetGuestConversion(), j.Assignment.GetSource().GetType())
}

// Name is the job's resource name.
func (j *Job) Name() string { return j.Assignment.GetJob().GetName() }

// Epoch is the fencing epoch of this assignment.
func (j *Job) Epoch() int64 { return j.Assignment.GetEpoch() }

// step is one stop of the itinerary.
type step struct {
	phase ferryv1.MigrationJobPhase
	name  string
	// countsBytes restarts the per-disk byte counts when the step begins.
	countsBytes bool
	do          func(ctx context.Context, d Drivers, j *Job) ([]string, error)
	// skip, when set and true, passes the step by without entering its
	// phase.
	skip func(j *Job) bool
}

// itinerary is the order a job is walked in. Later issues insert precopy
// rounds and cutover here, as steps, not as branches.
var itinerary = []step{
	{ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONVERTING, "prepare the cache directory", false, prepareCache, nil},
	{ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONVERTING, "copy the source disks to the cache", true, convert, nil},
	{ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_PREPARING, prepareStep, false, prepareGuest, func(j *Job) bool { return !j.ConvertsGuest() }},
	{ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_UPLOADING, uploadStep, true, upload, nil},
	{ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_UPLOADING, verifyStep, false, verify, nil},
	{ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONFIGURING, "define the target VM", false, configure, nil},
}

// exportItinerary is an export job's: the same copy to the cache, then the
// bundle instead of a target VM.
var exportItinerary = []step{
	{ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONVERTING, "prepare the cache directory", false, prepareCache, nil},
	{ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONVERTING, "copy the source disks to the cache", true, convertOnly, nil},
	{ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_EXPORTING, "write the bundle", true, export, nil},
}

// itineraryOf is the itinerary job walks: an export's, a warm job's
// precopy rounds and cutover, or a migration's.
func itineraryOf(j *Job) []step {
	switch {
	case j.IsExport():
		return exportItinerary
	case j.IsWarm():
		return warmItinerary
	}
	return itinerary
}

// IsExport says whether the job writes a bundle instead of a target VM.
func (j *Job) IsExport() bool { return j.Assignment.GetJob().GetExport() != nil }

func convertOnly(ctx context.Context, d Drivers, j *Job) ([]string, error) {
	platform := j.Assignment.GetSource().GetType()
	src, ok := d.Sources[platform]
	if !ok || src == nil {
		return nil, &NoDriverError{What: platformName(platform) + " source"}
	}
	return nil, src.Convert(ctx, j)
}

func export(ctx context.Context, d Drivers, j *Job) ([]string, error) {
	if d.Exporter == nil {
		return nil, &NoDriverError{What: "export"}
	}
	return nil, d.Exporter.Export(ctx, j)
}

// prepareCache makes the job's cache directory and removes what an earlier
// attempt's PREPARING left: this attempt converts the guest again, or (with
// guest_conversion OFF) uploads the cache images as CONVERTING made them.
func prepareCache(_ context.Context, _ Drivers, j *Job) ([]string, error) {
	if err := cache.MakeJobDir(j.CacheDir); err != nil {
		return nil, fmt.Errorf("cache directory %s: %w", j.CacheDir, err)
	}
	for _, d := range j.Assignment.GetJob().GetTarget().GetDisks() {
		if err := cache.RemovePrepared(j.CacheDir, d.GetSourceDisk()); err != nil {
			return nil, err
		}
	}
	return nil, nil
}

const prepareStep = "convert the guest"

// prepareGuest converts the guest on the cache images (PREPARING).
func prepareGuest(ctx context.Context, d Drivers, j *Job) ([]string, error) {
	if d.Preparer == nil {
		return nil, &NoDriverError{What: "guest conversion"}
	}
	in, err := d.Preparer.Prepare(ctx, j)
	if err != nil {
		return nil, err
	}
	j.inspection = in
	return nil, nil
}

const (
	uploadStep = "upload the disks to primary storage"
	verifyStep = "verify the target disks against the source"
)

// stepReason is why a job failed in step: a target found not to hold
// what the source held failed the verification, whichever step read it
// back (the upload verifies beside itself).
func stepReason(step string, err error) string {
	if errors.Is(err, pipeline.ErrMismatch) {
		step = verifyStep
	}
	return step + ": " + err.Error()
}

func convert(ctx context.Context, d Drivers, j *Job) ([]string, error) {
	platform := j.Assignment.GetSource().GetType()
	src, ok := d.Sources[platform]
	if !ok || src == nil {
		return nil, &NoDriverError{What: platformName(platform) + " source"}
	}
	// A guest converted after the copy is uploaded after PREPARING, not
	// beside the copy.
	if o, ok := d.Target.(Overlapper); ok && !j.ConvertsGuest() {
		j.startBeside(ctx, o)
	}
	return nil, src.Convert(ctx, j)
}

func upload(ctx context.Context, d Drivers, j *Job) ([]string, error) {
	if b := j.beside; b != nil {
		close(b.converted)
		<-b.done
		return nil, b.err
	}
	if d.Target == nil {
		return nil, &NoDriverError{What: "target"}
	}
	return nil, d.Target.Upload(ctx, j)
}

// beside is an upload running beside CONVERTING; walk owns it.
type beside struct {
	converted chan struct{} // closed by the UPLOADING step
	done      chan struct{} // closed when UploadBeside returned
	err       error         // what it returned, once done
	cancel    context.CancelFunc
}

// startBeside starts the target's upload beside the copy. The UPLOADING
// phase's timing begins now; the job's phase stays CONVERTING until the
// copy ends.
func (j *Job) startBeside(ctx context.Context, o Overlapper) {
	ctx, cancel := context.WithCancel(ctx)
	b := &beside{converted: make(chan struct{}), done: make(chan struct{}), cancel: cancel}
	j.beside = b
	j.Progress.beginEarly(ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_UPLOADING)
	go func() {
		defer close(b.done)
		b.err = o.UploadBeside(ctx, j, b.converted)
		if b.err != nil && ctx.Err() == nil && j.watches != nil {
			// The copy is still running: stop it, the job has failed.
			j.watches.fail(&stopCause{outcome: agentv1.JobOutcome_JOB_OUTCOME_FAILED, reason: stepReason(uploadStep, b.err)})
		}
	}()
}

// stopBeside ends the upload beside the copy, if any, and waits for it.
func (j *Job) stopBeside() {
	if b := j.beside; b != nil {
		b.cancel()
		<-b.done
	}
}

func verify(ctx context.Context, d Drivers, j *Job) ([]string, error) {
	v, ok := d.Target.(Verifier)
	if !ok {
		return nil, nil
	}
	return nil, v.Verify(ctx, j)
}

func configure(ctx context.Context, d Drivers, j *Job) ([]string, error) {
	if d.Target == nil {
		return nil, &NoDriverError{What: "target"}
	}
	return d.Target.Configure(ctx, j)
}

func platformName(p ferryv1.Platform) string {
	switch p {
	case ferryv1.Platform_PLATFORM_KVM:
		return "KVM"
	case ferryv1.Platform_PLATFORM_VMWARE:
		return "VMware"
	case ferryv1.Platform_PLATFORM_BUNDLE:
		return "bundle"
	default:
		return p.String()
	}
}

// cacheDir is where a job keeps its cache: under the migration server's
// cache path, or the agent's data directory when the server has none.
func cacheDir(dataDir string, a *agentv1.Assignment) string {
	id := path.Base(a.GetJob().GetName())
	if p := a.GetMigrationServer().GetCachePath(); p != "" {
		return filepath.Join(p, id)
	}
	return filepath.Join(dataDir, "cache", id)
}

// walk runs the itinerary in order and returns the result of the job.
func walk(ctx context.Context, d Drivers, j *Job) *agentv1.JobResult {
	res := &agentv1.JobResult{Job: j.Name(), Epoch: j.Epoch()}
	defer func() {
		res.PhaseTimings = j.Progress.endPhases()
		if j.IsWarm() {
			res.PrecopyRounds = j.Progress.Rounds()
		}
	}()
	defer j.stopBeside()
	for _, s := range itineraryOf(j) {
		if s.skip != nil && s.skip(j) {
			continue
		}
		j.Progress.enter(s.phase, s.countsBytes)
		j.Log.Debug("step", "phase", s.phase, "step", s.name)
		warnings, err := s.do(ctx, d, j)
		res.Warnings = append(res.Warnings, warnings...)
		if err == nil {
			err = ctx.Err()
		}
		if err != nil {
			res.Outcome, res.Reason = failure(ctx, s.name, err)
			res.Disks = j.Progress.snapshot()
			return res
		}
	}
	res.Outcome = agentv1.JobOutcome_JOB_OUTCOME_SUCCEEDED
	res.Disks = j.Progress.snapshot()
	if j.IsWarm() {
		res.MeasuredDowntime = durationpb.New(j.warm.downtime)
	}
	res.BootVerifiedBy = j.bootVerifiedBy
	res.GuestInspection = j.inspection
	return res
}

// failure turns why a step stopped into an outcome and reason.
func failure(ctx context.Context, step string, err error) (agentv1.JobOutcome, string) {
	var stop *stopCause
	if ctx.Err() != nil && errors.As(context.Cause(ctx), &stop) {
		return stop.outcome, stop.reason
	}
	return agentv1.JobOutcome_JOB_OUTCOME_FAILED, stepReason(step, err)
}

// stopCause is why the runner stopped a job.
type stopCause struct {
	outcome agentv1.JobOutcome
	reason  string
}

func (c *stopCause) Error() string { return c.reason }
