// Package bundlesrc is the source driver of bundle sources (Source type
// PLATFORM_BUNDLE): a directory of a migration server holding export
// bundles, one subdirectory each (package bundle). Its inventory is the
// bundles whose signature holds, each a VM whose id is the bundle's
// directory name; a job copies the bundle's disks into the cache as any
// source driver does, after checking the whole bundle again (signature,
// then every file and its content), so a bundle changed since the sync
// is refused naming the file.
package bundlesrc

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
	"github.com/ferry-v2v/ferry/agent/internal/pipeline"
	"github.com/ferry-v2v/ferry/agent/internal/runner"
	"github.com/ferry-v2v/ferry/pkg/bundle"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// Driver reads bundle sources.
type Driver struct{ log *slog.Logger }

var (
	_ runner.Source = (*Driver)(nil)
	_ runner.Lister = (*Driver)(nil)
)

// New returns the driver.
func New(log *slog.Logger) *Driver {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Driver{log: log.With("component", "bundle source")}
}

// location is a bundle source's directory and the key its bundles must
// be signed with (nil: the key each carries).
func location(src *ferryv1.Source) (string, ed25519.PublicKey, error) {
	b := src.GetBundle()
	if b == nil || !filepath.IsAbs(b.GetPath()) {
		return "", nil, fmt.Errorf("source %s has no absolute bundle path", src.GetName())
	}
	if b.GetPublicKey() == "" {
		return b.GetPath(), nil, nil
	}
	k, err := bundle.DecodeKey(b.GetPublicKey())
	if err != nil {
		return "", nil, fmt.Errorf("source %s: %w", src.GetName(), err)
	}
	return b.GetPath(), k, nil
}

// Inventory lists the bundles of the source's directory. A bundle whose
// manifest does not verify is left out, and logged naming the file.
func (d *Driver) Inventory(_ context.Context, req *agentv1.InventoryRequest) (*ferryv1.SourceInventory, error) {
	dir, key, err := location(req.GetSource())
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("bundle directory: %w", err)
	}
	inv := &ferryv1.SourceInventory{Product: &ferryv1.SourceProduct{FullName: "Ferry bundles in " + dir, ApiType: "bundle"}}
	for _, e := range entries {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if _, err := os.Stat(filepath.Join(dir, e.Name(), bundle.ManifestFile)); err != nil {
			continue // not a bundle
		}
		vm, err := readVM(filepath.Join(dir, e.Name()), key)
		if err != nil {
			d.log.Warn("bundle left out of the inventory", "err", err)
			continue
		}
		inv.Vms = append(inv.Vms, vm)
	}
	sort.Slice(inv.Vms, func(i, j int) bool { return inv.Vms[i].GetId() < inv.Vms[j].GetId() })
	return inv, nil
}

// readVM is the VM a bundle describes, its id the bundle's directory
// name, shut off (a bundle runs nowhere).
func readVM(dir string, key ed25519.PublicKey) (*ferryv1.SourceVm, error) {
	m, _, err := bundle.Read(dir, key)
	if err != nil {
		return nil, err
	}
	vm := &ferryv1.SourceVm{}
	if err := protojson.Unmarshal(m.VM, vm); err != nil {
		return nil, &bundle.Error{File: filepath.Join(dir, bundle.ManifestFile), Reason: "vm: " + err.Error()}
	}
	vm.Id = filepath.Base(dir)
	vm.State = ferryv1.SourceVmState_SOURCE_VM_STATE_SHUT_OFF
	vm.Host, vm.Cluster, vm.Datacenter = "", "", ""
	// The disks as the bundle holds them.
	var disks []*ferryv1.SourceDisk
	for _, d := range m.Disks {
		sd := &ferryv1.SourceDisk{Target: d.SourceDisk, Path: filepath.Join(dir, d.File), Format: d.Format, CapacityBytes: d.SizeBytes,
			AllocationBytes: d.FileBytes, Bus: d.Bus}
		if d.Boot {
			sd.BootOrder = 1
		}
		disks = append(disks, sd)
	}
	vm.Disks = disks
	return vm, nil
}

// Convert checks the job's bundle whole, then copies its disks into the
// cache and records its VM (and NVRAM) for CONFIGURING.
func (d *Driver) Convert(ctx context.Context, job *runner.Job) error {
	a := job.Assignment
	root, key, err := location(a.GetSource())
	if err != nil {
		return err
	}
	id := a.GetJob().GetSourceVm()
	if id == "" || strings.ContainsAny(id, "/\x00") || id == "." || id == ".." {
		return fmt.Errorf("bundle %q is not a directory name", id)
	}
	dir := filepath.Join(root, id)
	job.Log.Info("verifying the bundle", "path", dir)
	m, _, err := bundle.Verify(ctx, dir, bundle.Options{PublicKey: key})
	if err != nil {
		return fmt.Errorf("bundle refused: %w", err)
	}
	vm, err := readVM(dir, key)
	if err != nil {
		return err
	}
	var nvram []byte
	if m.NVRAM != nil {
		if nvram, err = os.ReadFile(filepath.Join(dir, m.NVRAM.File)); err != nil {
			return err
		}
	}
	if err := cache.SaveSourceVM(job.CacheDir, vm, nvram); err != nil {
		return err
	}
	for _, td := range a.GetJob().GetTarget().GetDisks() {
		disk, ok := find(m, td.GetSourceDisk())
		if !ok {
			return fmt.Errorf("bundle %s has no disk %s", dir, td.GetSourceDisk())
		}
		if err := copyDisk(ctx, job, filepath.Join(dir, disk.File), disk); err != nil {
			return fmt.Errorf("disk %s: %w", td.GetSourceDisk(), err)
		}
	}
	return nil
}

func find(m *bundle.Manifest, disk string) (bundle.Disk, bool) {
	for _, d := range m.Disks {
		if d.SourceDisk == disk {
			return d, true
		}
	}
	return bundle.Disk{}, false
}

// copyDisk copies one bundle disk into its cache image, served
// read-only by qemu-nbd, through the pipeline every source uses
// (checkpoints, checksums, the downstream limit).
func copyDisk(ctx context.Context, job *runner.Job, path string, disk bundle.Disk) error {
	img, err := bundle.Open(ctx, path, disk.Format)
	if err != nil {
		return err
	}
	defer img.Close()
	name := disk.SourceDisk
	compressed := job.Assignment.GetJob().GetOptions().GetCompression() != ferryv1.Compression_COMPRESSION_NONE
	ci, err := cache.Open(ctx, job.CacheDir, name, img.Client.Size(), compressed, job.Log)
	if err != nil {
		return err
	}
	defer ci.Close()
	ckpt, err := pipeline.LoadCheckpoint(ci.CheckpointPath(), img.Client.Size(), pipeline.DefaultChunkSize)
	if err != nil {
		return err
	}
	st, err := pipeline.Copy(ctx, pipeline.NBDSource{Client: img.Client}, ci, pipeline.Options{
		Limiter: job.Downstream, Checkpoint: ckpt, Logger: job.Log,
		Progress: func(done, total int64) {
			job.Progress.SetTotal(name, total)
			job.Progress.Set(name, done)
		},
	})
	if err != nil {
		return err
	}
	job.Log.Info("disk copied to the cache", "disk", name, "read_bytes", st.DataBytes, "seconds", st.Duration.Seconds())
	return ci.Close()
}
