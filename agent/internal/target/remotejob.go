package target

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sync"
	"time"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
	"github.com/ferry-v2v/ferry/agent/internal/pipeline"
	"github.com/ferry-v2v/ferry/agent/internal/runner"
	"github.com/ferry-v2v/ferry/pkg/backoff"
	"github.com/ferry-v2v/ferry/pkg/nbd"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/tlsutil"
)

// TargetRequester asks a job's target host's agent for an action through
// the leader (session.Targets).
type TargetRequester interface {
	Request(ctx context.Context, req *agentv1.TargetRequest) (*agentv1.TargetWorkResult, error)
}

// Remote lets the migration server's driver run jobs whose VM is placed on
// another host (MigrationJob.target_host): that host's agent creates and
// serves the volumes, this one uploads onto them over the migration
// network, and that one defines the domain (docs/placement.md).
type Remote struct {
	// HostName is this agent's host name (--host-name).
	HostName string
	// IdentityDir is this agent's certificate directory: the uploads
	// present its certificate and check the target host's.
	IdentityDir string
	Targets     TargetRequester
	// RetryBudget is how long an upload keeps trying after the target
	// host went away (default DefaultRemoteRetryBudget); RetryBudgetFunc,
	// when set and answering more than 0, overrides it (the agent gives the
	// coordinators' grace period).
	RetryBudget     time.Duration
	RetryBudgetFunc func() time.Duration
}

// remoteExports remembers, per job, the volumes its target host serves.
type remoteExports struct {
	mu   sync.Mutex
	jobs map[string][]*agentv1.TargetExport
}

func (r *remoteExports) set(job string, e []*agentv1.TargetExport) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.jobs == nil {
		r.jobs = map[string][]*agentv1.TargetExport{}
	}
	if e == nil {
		delete(r.jobs, job)
		return
	}
	r.jobs[job] = e
}

func (r *remoteExports) get(job string) []*agentv1.TargetExport {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.jobs[job]
}

// targetHostOf is the job's target host when it is another host than
// this agent's and the driver can work with one, else "".
func (d *Driver) targetHostOf(job *runner.Job) string {
	th := job.Assignment.GetJob().GetTargetHost()
	if th == "" || d.opts.Remote.Targets == nil || path.Base(th) == d.opts.Remote.HostName {
		return ""
	}
	return th
}

// uploadHostOf is the job's target host when the upload goes there: its
// local storage. Shared storage (nfs, ceph, sharedblock) is written by the
// migration server's agent as for a VM placed on its own host; only the
// domain is the target host's.
func (d *Driver) uploadHostOf(job *runner.Job) string {
	if job.Assignment.GetPrimaryStorage().GetType() != ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_LOCAL {
		return ""
	}
	return d.targetHostOf(job)
}

func (d *Driver) ask(ctx context.Context, job *runner.Job, action agentv1.TargetAction, srcVM, nvram []byte) (*agentv1.TargetWorkResult, error) {
	return d.opts.Remote.Targets.Request(ctx, &agentv1.TargetRequest{Job: job.Name(), Epoch: job.Epoch(), Action: action,
		SourceVm: srcVM, Nvram: nvram})
}

// prepareRemote asks the target host to create and serve the volumes.
func (d *Driver) prepareRemote(ctx context.Context, job *runner.Job) ([]*agentv1.TargetExport, error) {
	ans, err := d.ask(ctx, job, agentv1.TargetAction_TARGET_ACTION_PREPARE_VOLUMES, nil, nil)
	if err != nil {
		return nil, err
	}
	disks := job.Assignment.GetJob().GetTarget().GetDisks()
	if len(ans.GetExports()) != len(disks) {
		return nil, fmt.Errorf("target host served %d volumes for %d disks", len(ans.GetExports()), len(disks))
	}
	d.exports.set(job.Name(), ans.GetExports())
	return ans.GetExports(), nil
}

func (d *Driver) remoteEndpoint(targetHost string, e *agentv1.TargetExport) (Endpoint, error) {
	cfg, err := tlsutil.PeerClientConfig(d.opts.Remote.IdentityDir, tlsutil.Identity{Role: tlsutil.RoleIDAgent, Name: path.Base(targetHost)})
	if err != nil {
		return Endpoint{}, fmt.Errorf("TLS to target host %s: %w", targetHost, err)
	}
	return Endpoint{Addr: e.GetAddress(), TLS: cfg, Export: e.GetExportName()}, nil
}

// DefaultRemoteRetryBudget is how long an upload onto another host keeps
// trying after that host or the link went away: the coordinators' default
// agent grace period.
const DefaultRemoteRetryBudget = 5 * time.Minute

// uploadRemote uploads every disk onto its volume on the target host,
// over the migration network, under the upstream limit: beside the copy,
// as followers of its checkpoint like the local upload (UploadBeside),
// each with an upload checkpoint of its own for that host. When the target
// host's agent or the link goes away it asks again, with backoff, for
// Remote.RetryBudget, and resumes each disk from its upload checkpoint;
// past the budget the job fails. The budget is per outage: an attempt
// that moved the upload on before it broke starts a new one (an upload
// beside a long copy would otherwise have spent it before the first
// break). A write the leader fences, or a volume found to differ from the
// cache, fails the job at once.
func (d *Driver) uploadRemote(ctx context.Context, job *runner.Job, targetHost string, converted <-chan struct{}) error {
	return d.retryRemote(ctx, job, targetHost, "upload", func(ctx context.Context, _ int) (bool, error) {
		return d.uploadRemoteOnce(ctx, job, targetHost, converted)
	})
}

// retryRemote runs attempt (numbered from 1) until it succeeds, with
// backoff for Remote.RetryBudget per outage: an attempt that says it moved
// the work on before it broke starts a new budget. A write the leader
// fenced, a volume found to differ, or one its target host lost, is not
// tried again. what names the work in the log.
func (d *Driver) retryRemote(ctx context.Context, job *runner.Job, targetHost, what string, attempt func(ctx context.Context, n int) (moved bool, err error)) error {
	budget := d.opts.Remote.RetryBudget
	if f := d.opts.Remote.RetryBudgetFunc; f != nil && f() > 0 {
		budget = f()
	}
	if budget == 0 {
		budget = DefaultRemoteRetryBudget
	}
	retry := func(err error) bool {
		return !errors.Is(err, errFenced) && !errors.Is(err, pipeline.ErrMismatch) && !errors.Is(err, ErrRemoteVolumeLost)
	}
	policy := backoff.Policy{Budget: budget, Min: 200 * time.Millisecond, Max: 10 * time.Second}
	attempts := 0
	for {
		var moved bool
		_, err := backoff.Retry(ctx, policy, nil, func(err error) bool { return retry(err) && !moved },
			func(ctx context.Context, _ int, _ time.Time) error {
				attempts++
				var err error
				moved, err = attempt(ctx, attempts)
				if err != nil && ctx.Err() == nil && retry(err) {
					job.Log.Warn(what+" onto the target host failed; trying again", "target_host", targetHost, "attempt", attempts,
						"moved_on", moved, "err", err)
				}
				return err
			})
		switch {
		case err == nil:
			if attempts > 1 {
				job.Log.Info(what+" onto the target host resumed and finished", "target_host", targetHost, "attempts", attempts)
			}
			return nil
		case ctx.Err() != nil || !retry(err):
			return err
		case moved:
			continue // a new outage, a new budget
		}
		return fmt.Errorf("target host %s lost: %w", targetHost, err)
	}
}

// errFenced marks a write the leader refused: no retry helps.
var errFenced = errors.New("fenced")

// fencedOnce is job's fence, its refusals marked errFenced: not tried
// again.
func fencedOnce(job *runner.Job) func(ctx context.Context, write string) error {
	return func(ctx context.Context, write string) error {
		if err := job.Fence(ctx, write); err != nil {
			return fmt.Errorf("%w: %w", errFenced, err)
		}
		return nil
	}
}

// uploadRemoteOnce is one attempt of uploadRemote; moved says whether it
// marked chunks durably on a volume, or read chunks back, before it ended.
func (d *Driver) uploadRemoteOnce(ctx context.Context, job *runner.Job, targetHost string, converted <-chan struct{}) (moved bool, err error) {
	exports, err := d.prepareRemote(ctx, job)
	if err != nil {
		return false, err
	}
	vols, err := volumes(job)
	if err != nil {
		return false, err
	}
	up := NewUploader(UploadDeps{Commander: d.opts.Commander, Copier: &NBDCopier{Limiter: job.Upstream, Log: job.Log}, Log: job.Log,
		Fence: fencedOnce(job)})
	var fs []*follower
	for i, disk := range job.Assignment.GetJob().GetTarget().GetDisks() {
		dst, err := d.remoteEndpoint(targetHost, exports[i])
		if err != nil {
			return false, err
		}
		f := newFollower(job, up, disk.GetSourceDisk(), vols[i], converted)
		f.onto(targetHost, dst, exports[i].GetCreated())
		fs = append(fs, f)
	}
	err = followAll(ctx, fs)
	for _, f := range fs {
		moved = moved || f.saved > 0 || f.verified > 0
	}
	return moved, err
}

// uploadCheckpointPath is where the chunks of a disk's cache image that
// are durably on its volume on a target host are recorded (uploadMarks,
// as cache.UploadCheckpointPath for this host's own volume).
func uploadCheckpointPath(cacheDir, disk, targetHost string) string {
	return filepath.Join(cacheDir, disk+".upload-"+path.Base(targetHost))
}

// uploadWholeRemote copies a cache image that has no checkpoint onto the
// target host's volume in one go.
func (f *follower) uploadWholeRemote(ctx context.Context) error {
	exp, err := cache.OpenExport(ctx, f.job.CacheDir, f.disk, f.log)
	if err != nil {
		return err
	}
	defer exp.Close()
	if err := f.up.fence(ctx, "upload onto "+f.remote.URI()); err != nil {
		return err
	}
	return f.up.copier.Copy(ctx, Endpoint{Socket: exp.Socket()}, *f.remote, CopyOptions{
		DstZeroed: f.created && f.vol.ZeroInitialized(),
		Progress:  func(done, _ int64) { f.job.Progress.Uploaded(f.disk, done) }})
}

// verifyRemote reads every volume back through the target host's export.
func (d *Driver) verifyRemote(ctx context.Context, job *runner.Job, targetHost string) error {
	exports := d.exports.get(job.Name())
	for i, disk := range job.Assignment.GetJob().GetTarget().GetDisks() {
		name := disk.GetSourceDisk()
		if job.Progress.Verified(name) {
			continue // read back and matched by the upload as it went
		}
		cp, err := copySums(job, name)
		if err != nil {
			return err
		}
		if cp == nil {
			continue
		}
		if exports == nil {
			if exports, err = d.prepareRemote(ctx, job); err != nil {
				return err
			}
		}
		dst, err := d.remoteEndpoint(targetHost, exports[i])
		if err != nil {
			return err
		}
		c, err := dst.dial(ctx, nbd.Options{Logger: job.Log})
		if err != nil {
			return fmt.Errorf("disk %s: read back %s: %w", name, dst.URI(), err)
		}
		st, err := pipeline.VerifyWith(ctx, pipeline.NBDSource{Client: c}, cp, pipeline.VerifyOptions{InFlight: verifyInFlight,
			Progress: verifyProgress(job, name, 0, cp.Size()), Limiter: job.Upstream})
		c.Close()
		if err != nil {
			return fmt.Errorf("disk %s: volume %s: %w", name, dst.URI(), err)
		}
		job.Log.Info("disk verified on the target host", "disk", name, "read_bytes", st.ReadBytes, "zero_bytes", st.ZeroBytes)
		job.Progress.SetVerified(name)
	}
	return nil
}

// configureRemote has the target host define (and start) the domain,
// with the source VM's facts and NVRAM from this host's cache.
func (d *Driver) configureRemote(ctx context.Context, job *runner.Job) ([]string, error) {
	src, nvram, err := sourceFacts(job)
	if err != nil {
		return nil, err
	}
	ans, err := d.ask(ctx, job, agentv1.TargetAction_TARGET_ACTION_DEFINE_DOMAIN, src, nvram)
	d.exports.set(job.Name(), nil)
	if err != nil {
		return nil, err
	}
	job.SetBootVerifiedBy(ans.GetBootVerifiedBy())
	return ans.GetWarnings(), nil
}

// sourceFacts are the source VM's facts (JSON) and NVRAM CONVERTING
// recorded in the cache, for the target host, which lacks them.
func sourceFacts(job *runner.Job) (src, nvram []byte, err error) {
	src, err = os.ReadFile(filepath.Join(job.CacheDir, cache.SourceVMFile))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("read the source VM's facts from the cache: %w", err)
	}
	nvram, err = os.ReadFile(filepath.Join(job.CacheDir, cache.NVRAMFile))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("read the source VM's NVRAM from the cache: %w", err)
	}
	return src, nvram, nil
}

// defineAheadRemote has the target host define the domain of a warm job,
// stopped, before its cutover stops the source; its volumes stay served
// for the last delta.
func (d *Driver) defineAheadRemote(ctx context.Context, job *runner.Job) ([]string, error) {
	src, nvram, err := sourceFacts(job)
	if err != nil {
		return nil, err
	}
	ans, err := d.ask(ctx, job, agentv1.TargetAction_TARGET_ACTION_DEFINE_DOMAIN_STOPPED, src, nvram)
	if err != nil {
		return nil, err
	}
	return ans.GetWarnings(), nil
}

// startRemote has the target host stop serving the volumes and start the
// domain defineAheadRemote defined.
func (d *Driver) startRemote(ctx context.Context, job *runner.Job) ([]string, error) {
	ans, err := d.ask(ctx, job, agentv1.TargetAction_TARGET_ACTION_START_DOMAIN, nil, nil)
	d.exports.set(job.Name(), nil)
	if err != nil {
		return nil, err
	}
	job.SetBootVerifiedBy(ans.GetBootVerifiedBy())
	return ans.GetWarnings(), nil
}

// rollbackRemote has the target host remove the domain and the volumes.
func (d *Driver) rollbackRemote(ctx context.Context, job *runner.Job) error {
	d.exports.set(job.Name(), nil)
	if _, err := d.ask(ctx, job, agentv1.TargetAction_TARGET_ACTION_ROLLBACK, nil, nil); err != nil {
		return err
	}
	// The volume made in place of a lost one is gone too.
	if err := os.Remove(lostMarker(job.CacheDir, job.Assignment.GetJob().GetTargetHost())); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
