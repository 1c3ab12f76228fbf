package target

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"libvirt.org/go/libvirt"

	"github.com/ferry-v2v/ferry/pkg/netsel"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/tlsutil"
)

// WorkerConfig is the target host's side of a job whose migration server
// is another host (docs/placement.md).
type WorkerConfig struct {
	// URI is this host's libvirt (default DefaultLibvirtURI).
	URI string
	// IdentityDir is this agent's certificate directory (ca.crt,
	// agent.crt, agent.key): the volumes are served with it.
	IdentityDir string
	// MigrationAddress is where volumes are served when the migration
	// server has no migration CIDR (or this host no address inside it).
	MigrationAddress string
	// Fence confirms with the leader, before each write, that the job
	// still runs under epoch (session.Fences.Confirm); nil confirms all.
	Fence func(ctx context.Context, job string, epoch int64, write string) error
	// Undo asks the leader, before a rollback, whether what job wrote
	// here under epoch may be undone (session.Fences.ConfirmUndo on this
	// host): nil when it may, ctx's error when no answer came, any other
	// error when the leader refused it (the job was assigned again with
	// its target on this host, whose volumes and domain are the new
	// assignment's now). nil allows all.
	Undo func(ctx context.Context, job string, epoch int64) error
	// Options are those of Define and Rollback.
	Options Options
	// QemuNBD is qemu-nbd's path; "" is qemu-nbd on PATH.
	QemuNBD string
}

// Worker carries out TargetWork on its own host: the volumes of a job
// placed here, served to the migration server's agent for the upload, and
// the job's domain.
type Worker struct {
	cfg WorkerConfig
	log *slog.Logger

	mu      sync.Mutex
	serving map[string][]*RemoteServer // by job
	// jobs holds a lock per job that its rollback and its volumes'
	// preparation take, so that a rollback of one epoch, and the
	// leader's word that allowed it, and a newer epoch's volumes do not
	// interleave (a pending cleanup sent on this agent's hello beside a
	// new assignment of the same job placed here again).
	jobs map[string]*jobLock
}

type jobLock struct {
	sync.Mutex
	users int
}

// NewWorker returns a worker.
func NewWorker(cfg WorkerConfig) *Worker {
	if cfg.URI == "" {
		cfg.URI = DefaultLibvirtURI
	}
	cfg.Options = cfg.Options.withDefaults()
	return &Worker{cfg: cfg, log: cfg.Options.Log.With("role", "target-host"), serving: map[string][]*RemoteServer{},
		jobs: map[string]*jobLock{}}
}

// lockJob takes job's lock and returns what releases it.
func (w *Worker) lockJob(job string) func() {
	w.mu.Lock()
	l := w.jobs[job]
	if l == nil {
		l = &jobLock{}
		w.jobs[job] = l
	}
	l.users++
	w.mu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		w.mu.Lock()
		if l.users--; l.users == 0 {
			delete(w.jobs, job)
		}
		w.mu.Unlock()
	}
}

// Do carries out one TargetWork and says how it went.
func (w *Worker) Do(ctx context.Context, work *agentv1.TargetWork) *agentv1.TargetWorkResult {
	job := work.GetJob().GetName()
	res := &agentv1.TargetWorkResult{RequestId: work.GetRequestId(), Job: job, Epoch: work.GetEpoch(), Action: work.GetAction()}
	log := w.log.With("job", job, "epoch", work.GetEpoch(), "action", work.GetAction().String())
	var err error
	switch work.GetAction() {
	case agentv1.TargetAction_TARGET_ACTION_PREPARE_VOLUMES:
		res.Exports, err = w.prepare(ctx, work)
	case agentv1.TargetAction_TARGET_ACTION_RELEASE_VOLUMES:
		err = w.release(job)
	case agentv1.TargetAction_TARGET_ACTION_DEFINE_DOMAIN:
		res.Warnings, res.BootVerifiedBy, err = w.define(ctx, work)
	case agentv1.TargetAction_TARGET_ACTION_DEFINE_DOMAIN_STOPPED:
		res.Warnings, err = w.defineStopped(ctx, work)
	case agentv1.TargetAction_TARGET_ACTION_START_DOMAIN:
		res.Warnings, res.BootVerifiedBy, err = w.start(ctx, work)
	case agentv1.TargetAction_TARGET_ACTION_ROLLBACK:
		res.Warnings, err = w.rollback(ctx, work)
	default:
		err = fmt.Errorf("unknown target action %v", work.GetAction())
	}
	if err != nil {
		res.Error = err.Error()
		log.Warn("target work failed", "err", err)
	} else {
		log.Info("target work done", "exports", len(res.GetExports()))
	}
	return res
}

// Close stops serving every volume.
func (w *Worker) Close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for job, rs := range w.serving {
		stopAll(rs)
		delete(w.serving, job)
	}
}

func (w *Worker) fence(ctx context.Context, work *agentv1.TargetWork, write string) error {
	if w.cfg.Fence == nil {
		return nil
	}
	return w.cfg.Fence(ctx, work.GetJob().GetName(), work.GetEpoch(), write)
}

// prepare creates the job's volumes (keeping those that exist: a second
// PREPARE resumes an upload) and serves each to the peer alone.
func (w *Worker) prepare(ctx context.Context, work *agentv1.TargetWork) ([]*agentv1.TargetExport, error) {
	job := work.GetJob().GetName()
	defer w.lockJob(job)()
	if work.GetPrimaryStorage().GetType() != ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_LOCAL {
		return nil, fmt.Errorf("%w: only local primary storage is served to another host, not %s", ErrBadStorage, work.GetPrimaryStorage().GetType())
	}
	vols, err := workVolumes(work)
	if err != nil {
		return nil, err
	}
	bind, err := w.bindAddress(work.GetMigrationCidr())
	if err != nil {
		return nil, err
	}
	if err := w.release(job); err != nil {
		return nil, err
	}
	var served []*RemoteServer
	var exports []*agentv1.TargetExport
	for i, vol := range vols {
		created := false
		if _, err := os.Stat(vol.Path); err != nil {
			created = true
			if err := w.fence(ctx, work, "create volume "+vol.Path); err != nil {
				stopAll(served)
				return nil, err
			}
			if err := vol.Create(ctx, w.cfg.Options.Commander); err != nil {
				stopAll(served)
				return nil, err
			}
		}
		if err := w.fence(ctx, work, "serve volume "+vol.Path+" writable"); err != nil {
			stopAll(served)
			return nil, err
		}
		rs, err := ServeRemote(ctx, vol, RemoteConfig{QemuNBD: w.cfg.QemuNBD, IdentityDir: w.cfg.IdentityDir, Bind: bind,
			Peer: tlsutil.Identity{Role: tlsutil.RoleIDAgent, Name: path.Base(work.GetPeerHost())}})
		if err != nil {
			stopAll(served)
			return nil, err
		}
		served = append(served, rs)
		exports = append(exports, &agentv1.TargetExport{SourceDisk: work.GetJob().GetTarget().GetDisks()[i].GetSourceDisk(),
			Address: rs.Addr(), ExportName: rs.Export(), Created: created})
	}
	w.mu.Lock()
	w.serving[job] = served
	w.mu.Unlock()
	return exports, nil
}

func (w *Worker) bindAddress(cidr string) (string, error) {
	if cidr != "" {
		if ip, err := netsel.LocalAddrIn(cidr); err == nil {
			return ip.String(), nil
		}
	}
	if w.cfg.MigrationAddress == "" {
		return "", fmt.Errorf("no address to serve volumes on: this host has none in the migration CIDR %q and the agent has no --migration-address", cidr)
	}
	return w.cfg.MigrationAddress, nil
}

// release stops serving the job's volumes, which flushes them.
func (w *Worker) release(job string) error {
	w.mu.Lock()
	rs := w.serving[job]
	delete(w.serving, job)
	w.mu.Unlock()
	return stopAll(rs)
}

func stopAll(rs []*RemoteServer) error {
	var errs []error
	for _, r := range rs {
		errs = append(errs, r.Stop())
	}
	return errors.Join(errs...)
}

// define defines (and starts) the job's domain on this host's libvirt,
// and with verify_boot waits for its guest to show it booted: at most
// RemoteBootTimeout, so that the answer comes before the requester sends
// the request again (session.DefaultTargetRetry).
func (w *Worker) define(ctx context.Context, work *agentv1.TargetWork) ([]string, string, error) {
	return w.onDomain(ctx, work, true, "define domain ", func(conn *libvirt.Connect, spec Spec) (*Defined, error) {
		return Define(ctx, conn, spec, w.bootOptions())
	})
}

// defineStopped defines the job's domain on this host's libvirt without
// starting it (a warm job's cutover, before the source stops): the
// volumes stay served, for the last delta.
func (w *Worker) defineStopped(ctx context.Context, work *agentv1.TargetWork) ([]string, error) {
	warnings, _, err := w.onDomain(ctx, work, false, "define domain ", func(conn *libvirt.Connect, spec Spec) (*Defined, error) {
		spec.DeferStart = true
		return Define(ctx, conn, spec, w.cfg.Options)
	})
	return warnings, err
}

// start stops serving the job's volumes (which flushes them) and starts
// the domain defineStopped defined, as define would have: with
// verify_boot it waits at most RemoteBootTimeout for the guest to boot.
func (w *Worker) start(ctx context.Context, work *agentv1.TargetWork) ([]string, string, error) {
	return w.onDomain(ctx, work, true, "start domain ", func(conn *libvirt.Connect, spec Spec) (*Defined, error) {
		return StartDefined(ctx, conn, spec, w.bootOptions())
	})
}

// onDomain runs fn on the job's domain spec and this host's libvirt once
// the leader confirmed the assignment (fenced as verb and the VM's name);
// release first stops serving the job's volumes.
func (w *Worker) onDomain(ctx context.Context, work *agentv1.TargetWork, release bool, verb string,
	fn func(*libvirt.Connect, Spec) (*Defined, error)) ([]string, string, error) {
	if release {
		if err := w.release(work.GetJob().GetName()); err != nil {
			return nil, "", err
		}
	}
	spec, err := workSpec(work)
	if err != nil {
		return nil, "", err
	}
	conn, err := libvirt.NewConnect(w.cfg.URI)
	if err != nil {
		return nil, "", fmt.Errorf("connect to this host's libvirt %s: %w", w.cfg.URI, err)
	}
	defer conn.Close()
	if err := w.fence(ctx, work, verb+spec.VM.GetVmName()); err != nil {
		return nil, "", err
	}
	def, err := fn(conn, spec)
	if err != nil {
		return nil, "", err
	}
	return def.Warnings, def.BootVerifiedBy, nil
}

// bootOptions are the worker's options with the boot wait bounded by
// RemoteBootTimeout.
func (w *Worker) bootOptions() Options {
	opts := w.cfg.Options
	if opts.BootTimeout <= 0 || opts.BootTimeout > RemoteBootTimeout {
		opts.BootTimeout = RemoteBootTimeout
	}
	return opts
}

// RemoteBootTimeout bounds the boot wait of a target VM defined for
// another host's migration server: its request is sent again after two
// minutes (session.DefaultTargetRetry), and a second define would replace
// the VM being waited for.
const RemoteBootTimeout = 90 * time.Second

// rollback stops serving and removes the job's domain and volumes, once
// the leader allowed it. One it refused (a newer assignment of the job
// owns this host's target now) is not an error: nothing here is the
// rollback's to undo, and a pending cleanup that asked for it is done.
func (w *Worker) rollback(ctx context.Context, work *agentv1.TargetWork) ([]string, error) {
	job := work.GetJob().GetName()
	defer w.lockJob(job)()
	if w.cfg.Undo != nil {
		if err := w.cfg.Undo(ctx, job, work.GetEpoch()); err != nil {
			if ctx.Err() != nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
				return nil, fmt.Errorf("no word from the leader on undoing epoch %d: %w", work.GetEpoch(), err)
			}
			w.log.Warn("rollback refused by the leader; the target is left to the job's newer assignment",
				"job", job, "epoch", work.GetEpoch(), "reason", err)
			return []string{fmt.Sprintf("target on this host not rolled back: %v", err)}, nil
		}
	}
	stopErr := w.release(job)
	spec, err := workSpec(work)
	if err != nil {
		return nil, err
	}
	conn, err := libvirt.NewConnect(w.cfg.URI)
	if err != nil {
		w.log.Warn("libvirt unreachable; removing the volumes only", "uri", w.cfg.URI, "err", err)
		conn = nil
	} else {
		defer conn.Close()
	}
	return nil, errors.Join(stopErr, Rollback(ctx, conn, spec, w.cfg.Options))
}

// workVolumes plans the job's volumes on this host, root first.
func workVolumes(work *agentv1.TargetWork) ([]Volume, error) {
	id := path.Base(work.GetJob().GetName())
	var out []Volume
	for _, d := range work.GetJob().GetTarget().GetDisks() {
		v, err := NameVolume(work.GetPrimaryStorage(), id, d.GetSourceDisk(), d.GetSizeBytes())
		if err != nil {
			return nil, fmt.Errorf("disk %s: %w", d.GetSourceDisk(), err)
		}
		out = append(out, v)
	}
	return out, nil
}

// workSpec is the domain's spec from the work alone: the source VM and
// NVRAM come from the migration server's cache, carried in the request.
func workSpec(work *agentv1.TargetWork) (Spec, error) {
	vols, err := workVolumes(work)
	if err != nil {
		return Spec{}, err
	}
	var src *ferryv1.SourceVm
	if len(work.GetSourceVm()) > 0 {
		src = &ferryv1.SourceVm{}
		if err := protojson.Unmarshal(work.GetSourceVm(), src); err != nil {
			return Spec{}, fmt.Errorf("the source VM's facts: %w", err)
		}
	}
	j := work.GetJob()
	return Spec{JobID: j.GetName(), VM: j.GetTarget(), Source: src, Volumes: vols, Networks: work.GetL3Networks(),
		NVRAM: work.GetNvram(), AutoStart: AutoStart(j.GetOptions()), VerifyBoot: j.GetOptions().GetVerifyBoot()}, nil
}
