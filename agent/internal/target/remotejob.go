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

// uploadRemote copies every cache image onto its volume on the target
// host, over the migration network, under the upstream limit. When the
// target host's agent or the link goes away it asks again, with backoff,
// for Remote.RetryBudget, and resumes each disk from its upload checkpoint;
// past the budget the job fails.
func (d *Driver) uploadRemote(ctx context.Context, job *runner.Job, targetHost string) error {
	budget := d.opts.Remote.RetryBudget
	if f := d.opts.Remote.RetryBudgetFunc; f != nil && f() > 0 {
		budget = f()
	}
	if budget == 0 {
		budget = DefaultRemoteRetryBudget
	}
	policy := backoff.Policy{Budget: budget, Min: 200 * time.Millisecond, Max: 10 * time.Second}
	attempts, err := backoff.Retry(ctx, policy, nil, func(err error) bool { return !errors.Is(err, errFenced) },
		func(ctx context.Context, attempt int, _ time.Time) error {
			err := d.uploadRemoteOnce(ctx, job, targetHost)
			if err != nil && ctx.Err() == nil {
				job.Log.Warn("upload onto the target host failed; trying again", "target_host", targetHost, "attempt", attempt, "err", err)
			}
			return err
		})
	if err != nil && ctx.Err() == nil {
		return fmt.Errorf("target host %s lost: %w", targetHost, err)
	}
	if attempts > 1 {
		job.Log.Info("upload onto the target host resumed and finished", "target_host", targetHost, "attempts", attempts)
	}
	return err
}

// errFenced marks a write the leader refused: no retry helps.
var errFenced = errors.New("fenced")

func (d *Driver) uploadRemoteOnce(ctx context.Context, job *runner.Job, targetHost string) error {
	exports, err := d.prepareRemote(ctx, job)
	if err != nil {
		return err
	}
	cp := &NBDCopier{Limiter: job.Upstream, Log: job.Log}
	for i, disk := range job.Assignment.GetJob().GetTarget().GetDisks() {
		name := disk.GetSourceDisk()
		dst, err := d.remoteEndpoint(targetHost, exports[i])
		if err != nil {
			return err
		}
		if err := d.copyRemote(ctx, job, cp, name, dst, uploadCheckpointPath(job.CacheDir, name, targetHost), exports[i].GetCreated()); err != nil {
			return fmt.Errorf("disk %s onto %s: %w", name, targetHost, err)
		}
	}
	return nil
}

// uploadCheckpointPath is where the chunks a disk's upload onto a target
// host has made durable are recorded, beside the cache image, with the
// generation of the image they came from (uploadGenerationPath).
func uploadCheckpointPath(cacheDir, disk, targetHost string) string {
	return filepath.Join(cacheDir, disk+".upload-"+path.Base(targetHost)+".ckpt")
}

func (d *Driver) copyRemote(ctx context.Context, job *runner.Job, cp *NBDCopier, disk string, dst Endpoint, ckptPath string, fresh bool) error {
	exp, err := cache.OpenExport(ctx, job.CacheDir, disk, job.Log)
	if err != nil {
		return err
	}
	defer exp.Close()
	// The checkpoint describes what one cache image (its generation) put
	// on this volume. A kept volume (not created anew by the target host)
	// resumes from it: the chunks it says were flushed there are not sent
	// again. A new volume, or a cache image of another generation than the
	// one the checkpoint was written from, starts over.
	gen, err := cache.Generation(job.CacheDir, disk)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	same := !fresh && sameUploadGeneration(ckptPath, gen)
	if !same {
		for _, p := range []string{ckptPath, cache.SumsPath(ckptPath)} {
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
		if err := writeUploadGeneration(ckptPath, gen); err != nil {
			return err
		}
	}
	ckpt, err := pipeline.LoadCheckpoint(ckptPath, exp.Size(), pipeline.DefaultChunkSize)
	if err != nil {
		return err
	}
	if err := job.Fence(ctx, "upload onto "+dst.URI()); err != nil {
		return fmt.Errorf("%w: %w", errFenced, err)
	}
	already := 0
	for i := range ckpt.Chunks() {
		if ckpt.Done(i) {
			already++
		}
	}
	start := time.Now()
	// A new qcow2 volume reads as zeroes, and one kept from an earlier try
	// of this image holds only its data, so its zeroes are zeroes too. A
	// kept volume an image of another generation wrote may hold anything:
	// the image's zeroes are written too.
	zeroed := fresh || same
	err = cp.Copy(ctx, Endpoint{Socket: exp.Socket()}, dst, CopyOptions{DstZeroed: zeroed, Checkpoint: ckpt, Progress: func(done, total int64) {
		job.Progress.SetTotal(disk, total)
		job.Progress.Set(disk, done)
	}})
	if err != nil {
		return err
	}
	job.Log.InfoContext(ctx, "uploaded to the target host", "disk", disk, "volume", dst.URI(), "resumed", same,
		"chunks_already_there", already, "chunks", ckpt.Chunks(), "seconds", time.Since(start).Seconds())
	return nil
}

// uploadGenerationPath is where the generation of the cache image an
// upload checkpoint was written from is kept, beside it.
func uploadGenerationPath(ckptPath string) string { return ckptPath + ".gen" }

// sameUploadGeneration says whether the checkpoint at ckptPath was written
// from the cache image of generation gen. A checkpoint with no record of
// its generation is not trusted.
func sameUploadGeneration(ckptPath, gen string) bool {
	b, err := os.ReadFile(uploadGenerationPath(ckptPath))
	return err == nil && string(b) == gen
}

// writeUploadGeneration records gen beside a checkpoint that starts over,
// durably, before any chunk of it is marked.
func writeUploadGeneration(ckptPath, gen string) error {
	p := uploadGenerationPath(ckptPath)
	tmp := p + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("record the upload's cache generation: %w", err)
	}
	_, err = f.WriteString(gen)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, p)
	}
	if err != nil {
		return fmt.Errorf("record the upload's cache generation: %w", err)
	}
	return nil
}

// verifyRemote reads every volume back through the target host's export.
func (d *Driver) verifyRemote(ctx context.Context, job *runner.Job, targetHost string) error {
	exports := d.exports.get(job.Name())
	if exports == nil {
		var err error
		if exports, err = d.prepareRemote(ctx, job); err != nil {
			return err
		}
	}
	for i, disk := range job.Assignment.GetJob().GetTarget().GetDisks() {
		name := disk.GetSourceDisk()
		cp, err := copySums(job, name)
		if err != nil {
			return err
		}
		if cp == nil {
			continue
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
	src, err := os.ReadFile(filepath.Join(job.CacheDir, cache.SourceVMFile))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read the source VM's facts from the cache: %w", err)
	}
	nvram, err := os.ReadFile(filepath.Join(job.CacheDir, cache.NVRAMFile))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read the source VM's NVRAM from the cache: %w", err)
	}
	ans, err := d.ask(ctx, job, agentv1.TargetAction_TARGET_ACTION_DEFINE_DOMAIN, src, nvram)
	d.exports.set(job.Name(), nil)
	if err != nil {
		return nil, err
	}
	return ans.GetWarnings(), nil
}

// rollbackRemote has the target host remove the domain and the volumes.
func (d *Driver) rollbackRemote(ctx context.Context, job *runner.Job) error {
	d.exports.set(job.Name(), nil)
	_, err := d.ask(ctx, job, agentv1.TargetAction_TARGET_ACTION_ROLLBACK, nil, nil)
	return err
}
