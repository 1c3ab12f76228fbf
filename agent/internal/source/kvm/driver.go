package kvm

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
	"github.com/ferry-v2v/ferry/agent/internal/pipeline"
	"github.com/ferry-v2v/ferry/agent/internal/runner"
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

// Driver is the KVM source driver as the runner sees it: Convert copies a
// job's disks to the cache, ListVMs answers inventory requests.
type Driver struct {
	log  *slog.Logger
	keys HostKeyReporter
}

var (
	_ runner.Source = (*Driver)(nil)
	_ runner.Lister = (*Driver)(nil)
)

// NewDriver returns the driver; keys may be nil.
func NewDriver(log *slog.Logger, keys HostKeyReporter) *Driver {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Driver{log: log, keys: keys}
}

// connect opens the source of an assignment or inventory request, from
// the migration server's address inside its migration CIDR.
func (d *Driver) connect(ctx context.Context, src *ferryv1.Source, ms *ferryv1.MigrationServer, secrets map[string]string, log *slog.Logger) (*Conn, error) {
	k := src.GetKvm()
	if k == nil {
		return nil, fmt.Errorf("%w: source %s has no KVM connection", ErrConfig, src.GetName())
	}
	dialer, err := netsel.Dialer(ms.GetMigrationCidr())
	if err != nil {
		return nil, fmt.Errorf("migration CIDR of %s: %w", ms.GetName(), err)
	}
	cfg := Config{
		Address: k.GetAddress(), Port: int(k.GetSshPort()), User: k.GetUser(),
		PinnedHostKey: k.GetHostKey(), KnownHostKey: k.GetObservedHostKey(),
		SASLUser: k.GetSaslUser(), SASLPassword: seal.Secret(secrets[k.GetSaslCredential()]),
		Dialer: dialer, Logger: log,
	}
	if secret := secrets[k.GetCredential()]; strings.Contains(secret, "PRIVATE KEY-----") {
		cfg.PrivateKeyPEM = seal.Secret(secret)
	} else {
		cfg.Password = seal.Secret(secret)
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

// Inventory describes the source host (with its libvirt version) and its
// running and paused VMs.
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
	inv := &ferryv1.SourceInventory{Product: conn.Product(), Hosts: []*ferryv1.SourceHost{conn.HostInfo()}}
	for _, vm := range vms {
		p := vm.Proto()
		p.Host = inv.Hosts[0].GetName()
		inv.Vms = append(inv.Vms, p)
	}
	return inv, nil
}

// Convert copies the job's disks from a consistent backup of the running
// VM into the cache. The backup job and its scratch files are gone on the
// source host however Convert ends.
func (d *Driver) Convert(ctx context.Context, job *runner.Job) error {
	a := job.Assignment
	conn, err := d.connect(ctx, a.GetSource(), a.GetMigrationServer(), a.GetSecrets(), job.Log)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.CheckVersions(a.GetPrimaryStorage().GetType() == ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_CEPH); err != nil {
		return err
	}
	vmName := a.GetJob().GetSourceVm()
	vm, err := conn.DescribeVM(ctx, vmName)
	if err != nil {
		return err
	}
	if err := d.saveSourceFacts(ctx, conn, vm, job.CacheDir); err != nil {
		return err
	}
	if err := conn.CleanupStale(ctx, vmName); err != nil {
		return fmt.Errorf("clean up an earlier backup of %s: %w", vmName, err)
	}
	disks := a.GetJob().GetTarget().GetDisks()
	targets := make([]string, len(disks))
	for i, disk := range disks {
		targets[i] = disk.GetSourceDisk()
	}
	b, err := conn.StartBackup(ctx, vmName, targets, BackupOptions{Pause: a.GetJob().GetOptions().GetPauseSourceVm()})
	if err != nil {
		return err
	}
	defer func() {
		if cerr := b.Close(context.WithoutCancel(ctx)); cerr != nil {
			job.Log.Error("end the source backup", "err", cerr)
		}
	}()
	for _, disk := range disks {
		if err := d.copyDisk(ctx, job, b, disk); err != nil {
			return fmt.Errorf("disk %s: %w", disk.GetSourceDisk(), err)
		}
	}
	return nil
}

// copyDisk copies one disk's export into its cache image, skipping what a
// checkpoint says the cache already holds.
func (d *Driver) copyDisk(ctx context.Context, job *runner.Job, b *Backup, disk *ferryv1.TargetDisk) error {
	name := disk.GetSourceDisk()
	nc, err := b.OpenDisk(ctx, name)
	if err != nil {
		return err
	}
	src, err := nbd.NewClient(ctx, nc, nbd.Options{ExportName: name, Logger: job.Log})
	if err != nil {
		nc.Close()
		return fmt.Errorf("open the backup export: %w", err)
	}
	defer src.Close()
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
	st, err := pipeline.Copy(ctx, pipeline.NBDSource{Client: src}, img, pipeline.Options{
		Limiter: job.Downstream, Checkpoint: ckpt, Logger: job.Log,
		Progress: func(done, total int64) {
			job.Progress.SetTotal(name, total)
			job.Progress.Set(name, done)
		},
	})
	if err != nil {
		return err
	}
	job.Log.Info("disk copied to the cache", "disk", name, "read_bytes", st.DataBytes,
		"skipped_bytes", st.SkippedBytes, "zero_bytes", st.ZeroBytes, "seconds", st.Duration.Seconds())
	return img.Close()
}

// saveSourceFacts records in the cache directory what the target side
// needs of the source VM: its description and, for UEFI, its NVRAM.
func (d *Driver) saveSourceFacts(ctx context.Context, conn *Conn, vm *VM, dir string) error {
	var nvram []byte
	if vm.Firmware.Type == FirmwareUEFI && vm.Firmware.NVRAM != "" {
		var err error
		if nvram, err = conn.ReadFile(ctx, vm.Firmware.NVRAM); err != nil {
			return fmt.Errorf("copy the NVRAM of %s: %w", vm.Name, err)
		}
	}
	return cache.SaveSourceVM(dir, vm.Proto(), nvram)
}
