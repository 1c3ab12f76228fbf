package target

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path"

	"libvirt.org/go/libvirt"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
	"github.com/ferry-v2v/ferry/agent/internal/runner"
)

// DefaultLibvirtURI is the target host's own libvirt.
const DefaultLibvirtURI = "qemu:///system"

// Driver is the target driver as the runner sees it: UPLOADING moves the
// cache images onto primary storage, CONFIGURING defines the VM, and
// Rollback undoes both after a failure or cancel. The target host is the
// agent's own, through its local libvirt, unless the job's VM is placed on
// another host (Options.Remote): then that host's agent does its part.
type Driver struct {
	uri     string
	opts    Options
	log     *slog.Logger
	exports remoteExports
}

var (
	_ runner.Target     = (*Driver)(nil)
	_ runner.Rollbacker = (*Driver)(nil)
)

// NewDriver returns the target driver for the libvirt at uri (default
// DefaultLibvirtURI).
func NewDriver(uri string, opts Options) *Driver {
	if uri == "" {
		uri = DefaultLibvirtURI
	}
	opts = opts.withDefaults()
	return &Driver{uri: uri, opts: opts, log: opts.Log}
}

// volumes names the volume of each disk the job keeps, root first.
func volumes(job *runner.Job) ([]Volume, error) {
	a := job.Assignment
	id := path.Base(a.GetJob().GetName())
	var out []Volume
	for _, d := range a.GetJob().GetTarget().GetDisks() {
		v, err := NameVolume(a.GetPrimaryStorage(), id, d.GetSourceDisk(), d.GetSizeBytes())
		if err != nil {
			return nil, fmt.Errorf("disk %s: %w", d.GetSourceDisk(), err)
		}
		out = append(out, v)
	}
	return out, nil
}

// Upload copies every cache image onto its volume under the migration
// server's upstream limit, once CONVERTING has ended: UploadBeside with
// the copy over, resuming what an earlier run uploaded of the same images.
func (d *Driver) Upload(ctx context.Context, job *runner.Job) error {
	converted := make(chan struct{})
	close(converted)
	return d.UploadBeside(ctx, job, converted)
}

// uploadWhole copies a cache image that has no checkpoint (made before
// checkpoints were kept) onto its volume in one go.
func uploadWhole(ctx context.Context, job *runner.Job, up *Uploader, disk string, vol Volume) error {
	exp, err := cache.OpenExport(ctx, job.CacheDir, disk, job.Log)
	if err != nil {
		return err
	}
	defer exp.Close()
	if exp.Size() > vol.Size {
		vol.Size = exp.Size()
	}
	return up.Upload(ctx, Endpoint{Socket: exp.Socket()}, vol, func(done, total int64) {
		job.Progress.SetTotal(disk, total)
		job.Progress.Set(disk, done)
	})
}

// Configure defines the target VM and starts it unless told not to; a VM
// the host lacks resources for stays stopped, with a warning.
func (d *Driver) Configure(ctx context.Context, job *runner.Job) ([]string, error) {
	if d.targetHostOf(job) != "" {
		return d.configureRemote(ctx, job)
	}
	def, err := d.defineLocal(ctx, job, func(*Spec) {})
	if err != nil {
		return nil, err
	}
	job.SetBootVerifiedBy(def.BootVerifiedBy)
	return def.Warnings, nil
}

var _ runner.CutoverConfigurer = (*Driver)(nil)

// DefineAhead defines a warm job's target VM, stopped, before its cutover
// stops the source; StartDefined starts it. A VM placed on another host
// is defined by that host's agent (TARGET_ACTION_DEFINE_DOMAIN_STOPPED),
// whose volumes stay served for the last delta.
func (d *Driver) DefineAhead(ctx context.Context, job *runner.Job) (bool, []string, error) {
	if d.targetHostOf(job) != "" {
		warnings, err := d.defineAheadRemote(ctx, job)
		return err == nil, warnings, err
	}
	def, err := d.defineLocal(ctx, job, func(s *Spec) { s.DeferStart = true })
	if err != nil {
		return false, nil, err
	}
	return true, def.Warnings, nil
}

// StartDefined starts the target VM DefineAhead defined.
func (d *Driver) StartDefined(ctx context.Context, job *runner.Job) ([]string, error) {
	if d.targetHostOf(job) != "" {
		return d.startRemote(ctx, job)
	}
	spec, err := d.spec(job)
	if err != nil {
		return nil, err
	}
	conn, err := libvirt.NewConnect(d.uri)
	if err != nil {
		return nil, fmt.Errorf("connect to the target host's libvirt %s: %w", d.uri, err)
	}
	defer conn.Close()
	if err := job.Fence(ctx, "start domain "+spec.VM.GetVmName()); err != nil {
		return nil, err
	}
	def, err := StartDefined(ctx, conn, spec, d.options(job))
	if err != nil {
		return nil, err
	}
	job.SetBootVerifiedBy(def.BootVerifiedBy)
	return def.Warnings, nil
}

// defineLocal defines the job's domain through the local libvirt, with
// change applied to its spec.
func (d *Driver) defineLocal(ctx context.Context, job *runner.Job, change func(*Spec)) (*Defined, error) {
	spec, err := d.spec(job)
	if err != nil {
		return nil, err
	}
	change(&spec)
	conn, err := libvirt.NewConnect(d.uri)
	if err != nil {
		return nil, fmt.Errorf("connect to the target host's libvirt %s: %w", d.uri, err)
	}
	defer conn.Close()
	if err := job.Fence(ctx, "define domain "+spec.VM.GetVmName()); err != nil {
		return nil, err
	}
	return Define(ctx, conn, spec, d.options(job))
}

// Rollback removes the job's domain, DHCP entries and volumes.
func (d *Driver) Rollback(ctx context.Context, job *runner.Job) error {
	if d.targetHostOf(job) != "" {
		return d.rollbackRemote(ctx, job)
	}
	spec, err := d.spec(job)
	if err != nil {
		return err
	}
	conn, err := libvirt.NewConnect(d.uri)
	if err != nil {
		d.log.Warn("target libvirt unreachable; removing the volumes only", "uri", d.uri, "err", err)
		conn = nil
	} else {
		defer conn.Close()
	}
	if err := Rollback(ctx, conn, spec, d.options(job)); err != nil {
		return err
	}
	// The volumes are gone: what the upload checkpoints say was uploaded
	// is no longer anywhere.
	for _, disk := range job.Assignment.GetJob().GetTarget().GetDisks() {
		if err := os.Remove(cache.UploadCheckpointPath(job.CacheDir, disk.GetSourceDisk())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove the upload checkpoint of disk %s: %w", disk.GetSourceDisk(), err)
		}
	}
	return nil
}

func (d *Driver) options(job *runner.Job) Options {
	o := d.opts
	o.Log = job.Log
	return o
}

// spec gathers the target VM's spec from the assignment and what
// CONVERTING recorded of the source VM in the cache.
func (d *Driver) spec(job *runner.Job) (Spec, error) {
	a := job.Assignment
	vols, err := volumes(job)
	if err != nil {
		return Spec{}, err
	}
	src, nvram, err := cache.LoadSourceVM(job.CacheDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return Spec{}, fmt.Errorf("read the source VM's description from the cache: %w", err)
	}
	return Spec{
		JobID: a.GetJob().GetName(), VM: a.GetJob().GetTarget(), Source: src, Volumes: vols,
		Networks: a.GetL3Networks(), NVRAM: nvram, AutoStart: AutoStart(a.GetJob().GetOptions()),
		VerifyBoot: a.GetJob().GetOptions().GetVerifyBoot(),
	}, nil
}
