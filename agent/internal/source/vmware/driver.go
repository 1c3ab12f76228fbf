package vmware

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
	"github.com/ferry-v2v/ferry/agent/internal/runner"
	"github.com/ferry-v2v/ferry/pkg/backoff"
	"github.com/ferry-v2v/ferry/pkg/netsel"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/seal"
)

// Options tune the driver; the zero value takes the defaults of Config.
type Options struct {
	// ShutdownTimeout is the guest shutdown timeout of assignments that
	// carry none (from a coordinator older than the setting).
	ShutdownTimeout     time.Duration
	LeaseUpdateInterval time.Duration
	// RetryBudget is how long an export whose connection to the source
	// dropped keeps trying to log in again, with backoff between
	// RetryBackoffMin and RetryBackoffMax, before its job fails
	// (DefaultRetryBudget when 0; a negative budget fails at once).
	RetryBudget                      time.Duration
	RetryBackoffMin, RetryBackoffMax time.Duration
}

// Driver is the VMware source driver as the runner sees it: Convert copies
// a job's disks to the cache, ListVMs answers inventory requests.
type Driver struct {
	log  *slog.Logger
	opts Options
	// stopped: the warm jobs whose source VM StopSource stopped.
	stopped stoppedVMs
}

var (
	_ runner.Source = (*Driver)(nil)
	_ runner.Lister = (*Driver)(nil)
)

// NewDriver returns the driver.
func NewDriver(log *slog.Logger, opts Options) *Driver {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Driver{log: log, opts: opts}
}

// Config is the connection to src from the migration server ms, whose
// migration CIDR gives the local address.
func (d *Driver) Config(src *ferryv1.Source, ms *ferryv1.MigrationServer, secrets map[string]string, log *slog.Logger) (Config, error) {
	v := src.GetVcenter()
	if v == nil {
		return Config{}, fmt.Errorf("%w: source %s has no vCenter connection", ErrConfig, src.GetName())
	}
	dialer, err := netsel.Dialer(ms.GetMigrationCidr())
	if err != nil {
		return Config{}, fmt.Errorf("migration CIDR of %s: %w", ms.GetName(), err)
	}
	cfg := Config{
		Address: v.GetAddress(), Port: int(v.GetPort()), User: v.GetUser(),
		Password: seal.Secret(secrets[v.GetCredential()]), UseHTTP: v.GetUseHttp(),
		Thumbprint: v.GetThumbprint(), SkipHostnameCheck: v.GetSkipHostnameCheck(), Dialer: dialer, Logger: log,
		ShutdownTimeout: d.opts.ShutdownTimeout, LeaseUpdateInterval: d.opts.LeaseUpdateInterval,
	}
	// ca_certificate holds a PEM bundle, or a thumbprint.
	if ca := strings.TrimSpace(v.GetCaCertificate()); strings.Contains(ca, "-----BEGIN") {
		cfg.CACertificatePEM = ca
	} else if ca != "" && cfg.Thumbprint == "" {
		cfg.Thumbprint = ca
	}
	return cfg, nil
}

func (d *Driver) connect(ctx context.Context, src *ferryv1.Source, ms *ferryv1.MigrationServer, secrets map[string]string, log *slog.Logger) (*Conn, error) {
	cfg, err := d.Config(src, ms, secrets, log)
	if err != nil {
		return nil, err
	}
	return Connect(ctx, cfg)
}

// Inventory reads the source's whole inventory, templates included.
func (d *Driver) Inventory(ctx context.Context, req *agentv1.InventoryRequest) (*ferryv1.SourceInventory, error) {
	conn, err := d.connect(ctx, req.GetSource(), req.GetMigrationServer(), req.GetSecrets(), d.log)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.Inventory(ctx)
}

// Convert shuts the VM down, exports a snapshot of it and decodes each
// disk's VMDK stream into the cache. The lease is released and the
// snapshot removed however Convert ends. From the shutdown on, the VM's
// power state is watched until the job ends, in every phase: a VM powered
// on again fails the job.
func (d *Driver) Convert(ctx context.Context, job *runner.Job) error {
	a := job.Assignment
	conn, err := d.connect(ctx, a.GetSource(), a.GetMigrationServer(), a.GetSecrets(), job.Log)
	if err != nil && backoff.Transport(err) && ctx.Err() == nil {
		// Unreachable when the job starts: tried again for the budget.
		job.Log.Warn("the source is unreachable; trying again", "err", err)
		conn, _, err = d.redial(ctx, job, err, nil)
	}
	if err != nil {
		return err
	}
	defer conn.Close()
	vm, err := conn.FindVM(ctx, a.GetJob().GetSourceVm())
	if err != nil {
		return err
	}
	disks, err := SelectDisks(vm, a.GetJob().GetTarget().GetDisks())
	if err != nil {
		return err
	}
	if err := Precheck(vm, disks); err != nil {
		return err
	}
	if err := cache.SaveSourceVM(job.CacheDir, vm.Proto(), nil); err != nil {
		return fmt.Errorf("save the source VM's description: %w", err)
	}
	if err := conn.PowerDown(ctx, vm, shutdownTimeout(a, conn.cfg.ShutdownTimeout), job.Log); err != nil {
		return err
	}
	if err := d.watchPower(ctx, job, vm); err != nil {
		return err
	}
	return d.exportDisks(ctx, conn, job, vm, disks)
}

// watchPower watches vm's power state until the job ends, on a session of
// its own: the export's session must outlive a watch that fails the job,
// to release the lease.
func (d *Driver) watchPower(ctx context.Context, job *runner.Job, vm *VM) error {
	a := job.Assignment
	conn, err := d.connect(ctx, a.GetSource(), a.GetMigrationServer(), a.GetSecrets(), job.Log)
	if err != nil {
		return fmt.Errorf("watch the power state of %s: %w", vm.Name, err)
	}
	err = job.Watch("source power state", func(ctx context.Context) error {
		for {
			err := conn.WatchPowerOn(ctx, vm)
			old := conn
			var again bool
			conn, again = d.rewatch(ctx, job, err)
			old.Close() // once reconnected, the old session's logout reaches the source
			if !again {
				if errors.Is(err, ErrPoweredOn) {
					return err
				}
				return nil
			}
		}
	})
	if err != nil {
		conn.Close()
	}
	return err
}

// shutdownTimeout is the assignment's guest shutdown timeout (the
// coordinator's setting), or fallback when it carries none.
func shutdownTimeout(a *agentv1.Assignment, fallback time.Duration) time.Duration {
	if d := a.GetGuestShutdownTimeout(); d != nil && d.CheckValid() == nil && d.AsDuration() > 0 {
		return d.AsDuration()
	}
	return fallback
}

// rewatch decides what follows a power-state watch that ended with err:
// a watch whose connection dropped logs in again (for the retry budget)
// and goes on, the new watch seeing at once a VM powered on meanwhile;
// any other end is final, and only a power-on fails the job (a lost
// vCenter connection must not fail a job whose disks are already copied).
func (d *Driver) rewatch(ctx context.Context, job *runner.Job, err error) (*Conn, bool) {
	switch {
	case err == nil, errors.Is(err, ErrPoweredOn), ctx.Err() != nil:
		return nil, false
	case !backoff.Transport(err):
		job.Log.Warn("watching the source VM's power state stopped", "err", err)
		return nil, false
	}
	job.Log.Warn("the power-state watch lost its connection to the source; reconnecting", "err", err)
	conn, attempts, rerr := d.redial(ctx, job, err, nil)
	if rerr != nil {
		if ctx.Err() == nil {
			job.Log.Warn("watching the source VM's power state stopped", "err", rerr)
		}
		return nil, false
	}
	job.Log.Info("the power-state watch reconnected", "attempts", attempts)
	return conn, true
}

// exportDisks copies the disks from an export of a snapshot, all at once.
// A dropped connection is retried for the retry budget: each download
// resumes where it broke, on a new export.
func (d *Driver) exportDisks(ctx context.Context, conn *Conn, job *runner.Job, vm *VM, disks []Disk) (err error) {
	src, err := d.startExport(ctx, conn, job, vm, SnapshotPrefix+path.Base(job.Name()))
	if err != nil {
		return err
	}
	defer func() {
		err = src.release(ctx, err)
		if c, _, _ := src.current(); c != conn {
			c.Close()
		}
		if n := src.reread.Load(); n > 0 {
			job.Log.Info("bytes read again to resume after reconnects", "bytes", n)
		}
	}()
	prog := newExportProgress(job, disks)
	g, gctx := errgroup.WithContext(ctx)
	keepCtx, stopKeep := context.WithCancel(gctx)
	g.Go(func() error { return src.keepAlive(keepCtx, prog.percent) })
	g.Go(func() error {
		defer stopKeep()
		cg, cctx := errgroup.WithContext(gctx)
		for _, disk := range disks {
			cg.Go(func() error {
				if err := copyDisk(cctx, conn, job, vm, disk, src.url(disk.Name), prog); err != nil {
					return fmt.Errorf("disk %s: %w", disk.Name, err)
				}
				return nil
			})
		}
		return cg.Wait()
	})
	return g.Wait()
}

// SelectDisks returns the VM's disks a job names (by device key or
// label), in the job's order; all of them when the job names none.
func SelectDisks(vm *VM, want []*ferryv1.TargetDisk) ([]Disk, error) {
	if len(want) == 0 {
		return vm.Disks, nil
	}
	out := make([]Disk, 0, len(want))
	for _, w := range want {
		found := false
		for _, d := range vm.Disks {
			if w.GetSourceDisk() == d.Name || w.GetSourceDisk() == d.Label {
				out = append(out, d)
				found = true
				break
			}
		}
		if !found {
			names := make([]string, len(vm.Disks))
			for i, d := range vm.Disks {
				names[i] = d.Name
			}
			return nil, fmt.Errorf("%w: VM %s has no disk %q (its disks: %s)", ErrPrecheck, vm.Name,
				w.GetSourceDisk(), strings.Join(names, ", "))
		}
	}
	return out, nil
}

// Precheck refuses what cannot be migrated as it is, one line per reason.
func Precheck(vm *VM, disks []Disk) error {
	var reasons []string
	if vm.Template {
		reasons = append(reasons, fmt.Sprintf("VM %s is a template", vm.Name))
	}
	if vm.Host.InMaintenanceMode {
		reasons = append(reasons, fmt.Sprintf("host %s of VM %s is in maintenance mode", vm.Host.Name, vm.Name))
	}
	for _, d := range disks {
		if !d.Dependent() {
			reasons = append(reasons, fmt.Sprintf("disk %s (%s) of VM %s is in %s mode, which snapshots leave out; "+
				"make it dependent first", d.Name, d.Label, vm.Name, d.Mode))
		}
	}
	if vm.Host.Version != "" {
		if err := checkVersion("host "+vm.Host.Name, vm.Host.Version); err != nil {
			reasons = append(reasons, err.Error())
		}
	}
	if len(reasons) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrPrecheck, strings.Join(reasons, "; "))
}
