package kvm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
	"github.com/ferry-v2v/ferry/agent/internal/pipeline"
	"github.com/ferry-v2v/ferry/agent/internal/runner"
	"github.com/ferry-v2v/ferry/pkg/kvmver"
	"github.com/ferry-v2v/ferry/pkg/nbd"
	"github.com/ferry-v2v/ferry/pkg/netsel"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/seal"
)

// HostKeyReporter passes a host key seen on first use to the coordinator,
// which records it on the source.
type HostKeyReporter interface {
	HostKey(source, key string)
}

// Defaults of Options.
const (
	DefaultRetryBudget     = 5 * time.Minute
	DefaultRetryBackoffMin = time.Second
	DefaultRetryBackoffMax = 15 * time.Second
)

// Options tune the driver; zero values take the defaults.
type Options struct {
	// RetryBudget is how long a copy whose SSH connection to the source
	// dropped keeps trying to reconnect, with backoff between
	// RetryBackoffMin and RetryBackoffMax, before its job fails. A
	// negative budget fails the job at once.
	RetryBudget                      time.Duration
	RetryBackoffMin, RetryBackoffMax time.Duration
	// KeepaliveInterval is how often source SSH connections are probed;
	// one silent for three intervals counts as dropped (30 s when 0).
	KeepaliveInterval time.Duration
	// ForceSnapshot names sources (sources/NAME) whose running and paused
	// VMs are copied by the snapshot method even when the source has the
	// backup API: for testing the method on a modern host.
	ForceSnapshot []string
	// CommitBandwidth limits the snapshot method's block commit on the
	// source host, in MiB/s (0: no limit).
	CommitBandwidth uint64
	// ImageFileReader makes the snapshot method read the image files with
	// their allocation maps even where the source host has qemu-nbd.
	ImageFileReader bool
	// StateDir keeps a record of every backup begun on a source until it
	// has been ended, so that the Janitor ends those a failure or a crash
	// left behind. Empty keeps no records.
	StateDir string
}

func (o Options) withDefaults() Options {
	if o.RetryBudget == 0 {
		o.RetryBudget = DefaultRetryBudget
	}
	if o.RetryBackoffMin <= 0 {
		o.RetryBackoffMin = DefaultRetryBackoffMin
	}
	if o.RetryBackoffMax < o.RetryBackoffMin {
		o.RetryBackoffMax = max(DefaultRetryBackoffMax, o.RetryBackoffMin)
	}
	return o
}

// Driver is the KVM source driver as the runner sees it: Convert copies a
// job's disks to the cache, ListVMs answers inventory requests.
type Driver struct {
	log  *slog.Logger
	keys HostKeyReporter
	opts Options

	mu      sync.Mutex
	active  map[string]bool         // leftover records of running backups
	stopped map[string]stopKind     // warm jobs whose source StopSource stopped, and how
	ending  map[string]func()       // ends a cutover's backup, for EndWarm
	cutover map[string]*cutoverPlan // what StopSource prepared for the cutover's round
}

var (
	_ runner.Source = (*Driver)(nil)
	_ runner.Lister = (*Driver)(nil)
)

// NewDriver returns the driver; keys may be nil.
func NewDriver(log *slog.Logger, keys HostKeyReporter, opts Options) *Driver {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Driver{log: log, keys: keys, opts: opts.withDefaults(), active: map[string]bool{}, stopped: map[string]stopKind{},
		ending: map[string]func(){}, cutover: map[string]*cutoverPlan{}}
}

// connect opens the source of an assignment or inventory request, from
// the migration server's address inside its migration CIDR.
func (d *Driver) connect(ctx context.Context, src *ferryv1.Source, ms *ferryv1.MigrationServer, secrets map[string]string, log *slog.Logger) (*Conn, error) {
	cfg, err := d.config(src, ms, secrets, log)
	if err != nil {
		return nil, err
	}
	conn, err := Connect(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if d.keys != nil && cfg.PinnedHostKey == "" && cfg.KnownHostKey == "" {
		d.keys.HostKey(src.GetName(), conn.ObservedHostKey())
	}
	return conn, nil
}

// config is how to reach src from the migration server ms.
func (d *Driver) config(src *ferryv1.Source, ms *ferryv1.MigrationServer, secrets map[string]string, log *slog.Logger) (Config, error) {
	k := src.GetKvm()
	if k == nil {
		return Config{}, fmt.Errorf("%w: source %s has no KVM connection", ErrConfig, src.GetName())
	}
	dialer, err := netsel.Dialer(ms.GetMigrationCidr())
	if err != nil {
		return Config{}, fmt.Errorf("migration CIDR of %s: %w", ms.GetName(), err)
	}
	cfg := Config{
		Address: k.GetAddress(), Port: int(k.GetSshPort()), User: k.GetUser(),
		PinnedHostKey: k.GetHostKey(), KnownHostKey: k.GetObservedHostKey(),
		SASLUser: k.GetSaslUser(), SASLPassword: seal.Secret(secrets[k.GetSaslCredential()]),
		Dialer: dialer, Logger: log, KeepaliveInterval: d.opts.KeepaliveInterval, CommitBandwidth: d.opts.CommitBandwidth,
		ImageFileReader: d.opts.ImageFileReader,
	}
	if secret := secrets[k.GetCredential()]; strings.Contains(secret, "PRIVATE KEY-----") {
		cfg.PrivateKeyPEM = seal.Secret(secret)
	} else {
		cfg.Password = seal.Secret(secret)
	}
	return cfg, nil
}

// Inventory describes the source host (with its libvirt version) and its
// running, paused and shut-off VMs.
func (d *Driver) Inventory(ctx context.Context, req *agentv1.InventoryRequest) (*ferryv1.SourceInventory, error) {
	conn, err := d.connect(ctx, req.GetSource(), req.GetMigrationServer(), req.GetSecrets(), d.log)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	vms, err := conn.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	inv := &ferryv1.SourceInventory{Product: conn.Product(), Hosts: []*ferryv1.SourceHost{conn.HostInfo()},
		Capabilities: conn.Capabilities(ctx, vms)}
	for _, vm := range vms {
		p := vm.Proto()
		p.Host = inv.Hosts[0].GetName()
		inv.Vms = append(inv.Vms, p)
	}
	return inv, nil
}

// Convert copies the job's disks from a consistent backup of the running
// VM into the cache; a shut-off VM's disks are read from its images
// instead (convertCold). The method is chosen from the source's versions
// and the VM's state as the coordinator's pre-checks choose it
// (Conn.CopyMethod); one that cannot run fails the job naming both
// versions. An unreachable source is tried again for the retry
// budget; so is a dropped SSH connection, the copy resuming on the same
// backup from the cache's checkpoints. The backup job and its scratch files are gone on the source
// host however Convert ends; when the source cannot be reached to end
// them, the Janitor does it later.
func (d *Driver) Convert(ctx context.Context, job *runner.Job) error {
	a := job.Assignment
	src := &source{d: d, job: job}
	if err := src.connectFirst(ctx); err != nil {
		return err
	}
	conn := src.conn
	defer func() { src.conn.Close() }()
	vmName := a.GetJob().GetSourceVm()
	vm, err := conn.DescribeVM(ctx, vmName)
	if err != nil {
		return err
	}
	// The coordinator's pre-checks ran on the versions of the last sync;
	// the source may have changed since.
	if err := conn.CheckVersions(cephReason(a, vm)); err != nil {
		return err
	}
	choice, err := conn.CopyMethod(vm)
	if err != nil {
		return err
	}
	switch {
	case choice.Method != kvmver.MethodBackup:
	case slices.Contains(d.opts.ForceSnapshot, a.GetSource().GetName()):
		choice.Method, choice.Why = kvmver.MethodSnapshot, "the agent forces it for this source (--kvm-force-snapshot)"
	case !conn.canBackup():
		choice = kvmver.NotRoot(choice, conn.cfg.User)
	}
	job.Log.Info("copy method chosen", "vm", vmName, "choice", choice.String())
	if err := conn.CleanupStale(ctx, vmName); err != nil {
		return fmt.Errorf("clean up an earlier backup of %s: %w", vmName, err)
	}
	// Described again: a stale snapshot's overlays were under its disks.
	if vm, err = conn.DescribeVM(ctx, vmName); err != nil {
		return err
	}
	disks := a.GetJob().GetTarget().GetDisks()
	targets := make([]string, len(disks))
	for i, disk := range disks {
		targets[i] = disk.GetSourceDisk()
	}
	switch choice.Method {
	case kvmver.MethodCold:
		return d.convertCold(ctx, src, vm, targets)
	case kvmver.MethodSnapshot:
		return d.convertSnapshot(ctx, src, vm, targets)
	}
	lp, err := d.planLive(ctx, src, vm, targets, allQcow2(vm, targets))
	if err != nil {
		return err
	}
	complete := false
	defer func() { // after the backup ended: it may hold the checkpoints
		if complete {
			d.liveEnded(context.WithoutCancel(ctx), src, vm, lp)
		}
	}()
	record := ""
	b, err := conn.StartBackup(ctx, vmName, targets, BackupOptions{Pause: a.GetJob().GetOptions().GetPauseSourceVm(),
		Checkpoint: lp.next, Incremental: lp.since,
		BeforeBegin: func(b *Backup) error {
			cfg, err := d.config(a.GetSource(), a.GetMigrationServer(), a.GetSecrets(), job.Log)
			if err == nil {
				record, err = d.remember(cfg, a.GetMigrationServer().GetMigrationCidr(), job.Name(), b)
			}
			return err
		}})
	if err != nil {
		d.release(record, true)
		return err
	}
	defer func() {
		cerr := b.Close(context.WithoutCancel(ctx))
		if cerr != nil {
			job.Log.Error("end the source backup; the agent tries again later", "err", cerr)
		}
		d.release(record, cerr == nil)
	}()
	if err := d.begun(ctx, src, b, targets, lp); err != nil {
		return err
	}
	// The description and NVRAM are read at the backup's point in time,
	// after the pause when the job pauses the source: a firmware that was
	// still writing its variables has stopped by then.
	if err := d.saveSourceVM(ctx, src.conn, vm, job.CacheDir); err != nil {
		return err
	}
	for _, disk := range disks {
		if err := src.copyDisk(ctx, b, disk); err != nil {
			return fmt.Errorf("disk %s: %w", disk.GetSourceDisk(), err)
		}
	}
	complete = true
	return liveCopied(job)
}

// allQcow2 reports whether every disk of vm named in targets is a qcow2
// image, which can carry the dirty bitmaps of checkpoints.
func allQcow2(vm *VM, targets []string) bool {
	for _, t := range targets {
		i := slices.IndexFunc(vm.Disks, func(d Disk) bool { return d.Target == t })
		if i < 0 || vm.Disks[i].Format != "qcow2" {
			return false
		}
	}
	return true
}

// exporter serves a job's source disks over NBD on the source host: a
// backup job of a running VM, or a cold export of a shut-off one.
type exporter interface {
	OpenDisk(ctx context.Context, target string) (net.Conn, error)
	// Reattach serves the disks again over a new source connection.
	Reattach(c *Conn) error
}

// coldWatchInterval is how often a cold copy asks whether its VM was
// started.
const coldWatchInterval = 2 * time.Second

// convertCold copies the disks of a shut-off VM from read-only NBD
// servers on its images (ColdExport), with the same copier as a backup.
// It fails with ErrVMStarted when the VM is started during the copy
// (asked every coldWatchInterval, which cancels the copy) or when its
// images changed by the end of it (a start and stop between two
// questions). The VM and its images are left as they are.
func (d *Driver) convertCold(ctx context.Context, src *source, vm *VM, targets []string) error {
	job := src.job
	a := job.Assignment
	record := ""
	e, err := src.conn.StartColdExport(ctx, vm, targets, func(e *ColdExport) error {
		cfg, err := d.config(a.GetSource(), a.GetMigrationServer(), a.GetSecrets(), job.Log)
		if err == nil {
			record, err = d.remember(cfg, a.GetMigrationServer().GetMigrationCidr(), job.Name(), e.leftoverOf())
		}
		return err
	})
	if err != nil {
		d.release(record, true)
		return err
	}
	defer func() {
		cerr := e.Close(context.WithoutCancel(ctx))
		if cerr != nil {
			job.Log.Error("end the cold export; the agent removes its sockets later", "err", cerr)
		}
		d.release(record, cerr == nil)
	}()
	if err := coldPoint(job, targets, e.stamps); err != nil {
		return err
	}
	job.Log.Info("the source VM is shut off: copying its images (cold)", "vm", vm.Name)
	if err := d.saveSourceVM(ctx, src.conn, vm, job.CacheDir); err != nil {
		return err
	}
	cctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		t := time.NewTicker(coldWatchInterval)
		defer t.Stop()
		for {
			select {
			case <-cctx.Done():
				return
			case <-t.C:
			}
			if err := e.Running(); err != nil {
				job.Log.Warn("the source VM was started during the cold copy", "err", err)
				cancel(err)
				return
			}
		}
	}()
	defer func() { cancel(nil); <-watched }()
	for _, disk := range a.GetJob().GetTarget().GetDisks() {
		if err := src.copyDisk(cctx, e, disk); err != nil {
			if cause := context.Cause(cctx); ctx.Err() == nil && errors.Is(cause, ErrVMStarted) {
				return cause
			}
			return fmt.Errorf("disk %s: %w", disk.GetSourceDisk(), err)
		}
	}
	if err := e.Check(ctx); err != nil {
		return err
	}
	return coldCopied(job, e.stamps)
}

// convertSnapshot copies the disks of a running or paused VM by the
// snapshot method (StartSnapshot): its original images are read as they
// were at the snapshot, with the same copier as a backup, and the
// overlays are merged back however the copy ends (when the source cannot
// be reached to do it, the Janitor does it later).
func (d *Driver) convertSnapshot(ctx context.Context, src *source, vm *VM, targets []string) error {
	job := src.job
	a := job.Assignment
	if a.GetJob().GetOptions().GetPauseSourceVm() {
		if err := src.conn.pause(vm.Name); err != nil {
			return err
		}
	}
	lp, err := d.planLive(ctx, src, vm, targets, false)
	if err != nil {
		return err
	}
	complete := false
	defer func() {
		if complete {
			d.liveEnded(context.WithoutCancel(ctx), src, vm, lp)
		}
	}()
	record := ""
	s, err := src.conn.StartSnapshot(ctx, vm, targets, func(s *Snapshot) error {
		cfg, err := d.config(a.GetSource(), a.GetMigrationServer(), a.GetSecrets(), job.Log)
		if err == nil {
			record, err = d.remember(cfg, a.GetMigrationServer().GetMigrationCidr(), job.Name(), s.leftoverOf())
		}
		return err
	})
	if err != nil {
		d.release(record, false) // the janitor makes sure the VM is back on its originals
		return err
	}
	defer func() {
		cerr := s.Close(context.WithoutCancel(ctx))
		if cerr != nil {
			job.Log.Error("merge the source snapshot back; the agent tries again later", "err", cerr)
		}
		d.release(record, cerr == nil)
	}()
	if err := d.saveSourceVM(ctx, src.conn, vm, job.CacheDir); err != nil {
		return err
	}
	for _, disk := range a.GetJob().GetTarget().GetDisks() {
		if err := src.copyDisk(ctx, s, disk); err != nil {
			return fmt.Errorf("disk %s: %w", disk.GetSourceDisk(), err)
		}
	}
	complete = true
	return liveCopied(job)
}

// copyOnce copies one disk's export into its cache image, skipping what a
// checkpoint says the cache already holds.
func (d *Driver) copyOnce(ctx context.Context, job *runner.Job, b exporter, disk *ferryv1.TargetDisk) (pipeline.Stats, error) {
	var st pipeline.Stats
	err := d.copyStats(ctx, job, b, disk, &st)
	return st, err
}

func (d *Driver) copyStats(ctx context.Context, job *runner.Job, b exporter, disk *ferryv1.TargetDisk, out *pipeline.Stats) error {
	name := disk.GetSourceDisk()
	if f, ok := b.(interface{ ImageSource(string) pipeline.Source }); ok {
		if src := f.ImageSource(name); src != nil {
			return d.copySource(ctx, job, name, src, out)
		}
	}
	nc, err := b.OpenDisk(ctx, name)
	if err != nil {
		return err
	}
	// The client's defaults suit the VM's QEMU: requests of
	// nbd.DefaultMaxRequest (256 KiB, served from buffers QEMU keeps; 2 MiB
	// ones cost it 200k page faults per GiB), 32 in flight (it serves 16
	// at a time per connection and finds the next ones waiting). See
	// pipeline's BenchmarkRequestSize and BenchmarkSourceVM.
	src, err := nbd.NewClient(ctx, nc, nbd.Options{ExportName: name, Logger: job.Log})
	if err != nil {
		nc.Close()
		return fmt.Errorf("open the source export: %w", err)
	}
	defer src.Close()
	return d.copySource(ctx, job, name, pipeline.NBDSource{Client: src}, out)
}

// copySource copies one disk from src into its cache image, skipping what
// a checkpoint says the cache already holds; out gets the copy's figures.
func (d *Driver) copySource(ctx context.Context, job *runner.Job, name string, src pipeline.Source, out *pipeline.Stats) error {
	compressed := job.Assignment.GetJob().GetOptions().GetCompression() != ferryv1.Compression_COMPRESSION_NONE
	img, err := cache.Open(ctx, job.CacheDir, name, src.Size(), compressed, job.Log)
	if err != nil {
		return err
	}
	defer img.Close()
	ckpt, err := pipeline.LoadCheckpoint(img.CheckpointPath(), src.Size(), pipeline.DefaultChunkSize)
	if err != nil {
		return err
	}
	st, err := pipeline.Copy(ctx, src, img, pipeline.Options{
		Limiter: job.Downstream, Checkpoint: ckpt, Logger: job.Log,
		Progress: func(done, total int64) {
			job.Progress.SetTotal(name, total)
			job.Progress.Set(name, done)
		},
	})
	if err != nil {
		return err
	}
	*out = st
	job.Log.Info("disk copied to the cache", "disk", name, "read_bytes", st.DataBytes,
		"skipped_bytes", st.SkippedBytes, "zero_bytes", st.ZeroBytes, "seconds", st.Duration.Seconds())
	return img.Close()
}

// saveSourceVM records in the cache directory what the target side
// needs of the source VM: its description and, for UEFI, its NVRAM.
func (d *Driver) saveSourceVM(ctx context.Context, conn *Conn, vm *VM, dir string) error {
	var nvram []byte
	if vm.Firmware.Type == FirmwareUEFI && vm.Firmware.NVRAM != "" {
		var err error
		if nvram, err = conn.ReadFile(ctx, vm.Firmware.NVRAM); err != nil {
			return fmt.Errorf("copy the NVRAM of %s: %w", vm.Name, err)
		}
	}
	return cache.SaveSourceVM(dir, vm.Proto(), nvram)
}

// cephReason says why the job involves Ceph: a source disk it copies is an
// RBD image, or its target storage is Ceph.
func cephReason(a *agentv1.Assignment, vm *VM) string {
	copies := map[string]bool{}
	for _, d := range a.GetJob().GetTarget().GetDisks() {
		copies[d.GetSourceDisk()] = true
	}
	return kvmver.CephReason(a.GetPrimaryStorage().GetType() == ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_CEPH,
		vm.Proto().GetDisks(), func(target string) bool { return copies[target] })
}
