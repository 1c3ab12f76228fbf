// Package export is the agent's EXPORTING phase: it turns a job's cache
// images into a bundle at the job's destination (a directory of the
// migration server, an NFS export or an SMB share it mounts), one file
// per disk in the export's format made by `qemu-img convert` from the
// cache, each read back and compared with the cache as a guest would
// read it, and ferry-bundle.json, whose manifest the coordinators' leader
// signs with the cluster's key (package bundle; the key never leaves the
// coordinators). The bundle is written under a hidden temporary name and
// renamed once whole and verified: a failed or cancelled export leaves
// nothing under the bundle's name, and Discard removes the rest.
package export

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
	"github.com/ferry-v2v/ferry/agent/internal/runner"
	"github.com/ferry-v2v/ferry/pkg/bundle"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// Options configure a Driver; zero values take the defaults.
type Options struct {
	Log *slog.Logger
	// Version is the agent's, written in every manifest.
	Version string
	// MountDir holds the mount points of NFS and SMB destinations (and,
	// for a moment, an SMB credentials file).
	MountDir string
	// Run runs a command (mount, umount); default os/exec. Tests record
	// the exact commands with it.
	Run func(ctx context.Context, argv []string) error
	// Now stamps the manifest; default time.Now.
	Now func() time.Time
	// Signer has each manifest signed by the coordinators' leader
	// (session.Signer): the cluster's private key never reaches an agent.
	Signer Signer
}

// Signer signs a bundle's manifest bytes for a job's assignment and
// answers the signature and the public key that makes it; an error when
// the leader refused (with its reason) or ctx ended.
type Signer interface {
	SignBundle(ctx context.Context, job string, epoch int64, manifest []byte) (signature, publicKey []byte, err error)
}

// Driver exports jobs; it is the runner's Exporter.
type Driver struct{ opts Options }

var _ runner.Exporter = (*Driver)(nil)

// New returns a Driver.
func New(opts Options) *Driver {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Run == nil {
		opts.Run = runCommand
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Version == "" {
		opts.Version = "dev"
	}
	return &Driver{opts: opts}
}

// partialName is where a bundle is written before it is whole: hidden,
// and named after the bundle and the assignment's epoch.
func partialName(bundleName string, epoch int64) string {
	return "." + bundleName + ".ferry-partial-" + strconv.FormatInt(epoch, 10)
}

// Export writes the job's bundle.
func (d *Driver) Export(ctx context.Context, job *runner.Job) error {
	a := job.Assignment
	e := a.GetJob().GetExport()
	if d.opts.Signer == nil {
		return errors.New("this agent has no bundle signer (no session with the coordinators)")
	}
	dest, release, err := d.open(ctx, job)
	if err != nil {
		return err
	}
	defer release()
	final := filepath.Join(dest, e.GetBundleName())
	if _, err := os.Lstat(final); err == nil {
		return fmt.Errorf("bundle %s exists already: remove it, or export under another bundle_name", final)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("bundle %s: %w", final, err)
	}
	tmp := filepath.Join(dest, partialName(e.GetBundleName(), job.Epoch()))
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("remove the partial bundle of an earlier attempt: %w", err)
	}
	if err := os.Mkdir(tmp, 0o750); err != nil {
		return fmt.Errorf("destination %s: %w", dest, err)
	}
	m, err := d.write(ctx, job, tmp)
	if err != nil {
		return err
	}
	// Every file is written and checked: the leader signs the manifest's
	// exact bytes (it checks the assignment is current and the manifest
	// names this job), and the signature must hold for them.
	body, err := bundle.Marshal(m)
	if err != nil {
		return err
	}
	sig, pub, err := d.opts.Signer.SignBundle(ctx, a.GetJob().GetName(), job.Epoch(), body)
	if err != nil {
		return fmt.Errorf("sign the bundle: %w", err)
	}
	b, err := bundle.Assemble(body, ed25519.PublicKey(pub), sig)
	if err != nil {
		return fmt.Errorf("the leader's signature: %w", err)
	}
	if err := writeSynced(filepath.Join(tmp, bundle.ManifestFile), b); err != nil {
		return err
	}
	// The manifest as a reader will check it: its signature, its file
	// names (each disk was compared with the cache as it was written).
	if _, _, err := bundle.Read(tmp, ed25519.PublicKey(pub)); err != nil {
		return fmt.Errorf("verify the bundle: %w", err)
	}
	if err := syncDir(tmp); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := os.Rename(tmp, final); err != nil {
		return fmt.Errorf("rename the finished bundle to %s: %w", final, err)
	}
	job.Log.Info("bundle written", "path", final, "disks", len(m.Disks), "format", e.GetFormat())
	return syncDir(dest)
}

// Discard removes the partial bundle of the job's assignment, if any.
func (d *Driver) Discard(ctx context.Context, job *runner.Job) error {
	dest, release, err := d.open(ctx, job)
	if err != nil {
		return err
	}
	defer release()
	tmp := filepath.Join(dest, partialName(job.Assignment.GetJob().GetExport().GetBundleName(), job.Epoch()))
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("remove %s: %w", tmp, err)
	}
	return nil
}

// write converts every disk into dir and returns the manifest, unsigned.
func (d *Driver) write(ctx context.Context, job *runner.Job, dir string) (*bundle.Manifest, error) {
	a := job.Assignment
	vm, nvram, err := cache.LoadSourceVM(job.CacheDir)
	if err != nil {
		return nil, fmt.Errorf("the source VM CONVERTING recorded: %w", err)
	}
	m, err := newManifest(a, vm, d.opts.Version, d.opts.Now())
	if err != nil {
		return nil, err
	}
	rate := rateLimit(job)
	for i, td := range a.GetJob().GetTarget().GetDisks() {
		disk, err := d.exportDisk(ctx, job, dir, td, rate)
		if err != nil {
			return nil, fmt.Errorf("disk %s: %w", td.GetSourceDisk(), err)
		}
		disk.Order = i
		fillDisk(disk, vm, td, i)
		m.Disks = append(m.Disks, *disk)
	}
	if nvram != nil {
		if err := writeSynced(filepath.Join(dir, cache.NVRAMFile), nvram); err != nil {
			return nil, err
		}
		sum, n, err := bundle.HashFile(filepath.Join(dir, cache.NVRAMFile))
		if err != nil {
			return nil, err
		}
		m.NVRAM = &bundle.File{File: cache.NVRAMFile, SHA256: sum, Bytes: n}
	}
	return m, nil
}

// rateLimit is what qemu-img convert may write per second: the export's
// own limit, else the migration server's upstream limit, else none (0).
func rateLimit(job *runner.Job) int64 {
	if r := job.Assignment.GetJob().GetExport().GetRateLimitBytesPerSecond(); r > 0 {
		return r
	}
	if job.Upstream != nil {
		return job.Upstream.Rate() / 8
	}
	return 0
}

// Formats: the file extension and qemu-img's -O and -o of each.
func formatOf(f ferryv1.ExportFormat, compress bool) (ext string, args []string) {
	switch f {
	case ferryv1.ExportFormat_EXPORT_FORMAT_RAW:
		return "raw", []string{"-O", "raw"}
	case ferryv1.ExportFormat_EXPORT_FORMAT_VMDK:
		return "vmdk", []string{"-O", "vmdk", "-o", "subformat=streamOptimized"}
	case ferryv1.ExportFormat_EXPORT_FORMAT_VHDX:
		return "vhdx", []string{"-O", "vhdx", "-o", "subformat=dynamic"}
	default:
		if compress {
			return "qcow2", []string{"-O", "qcow2", "-c"}
		}
		return "qcow2", []string{"-O", "qcow2"}
	}
}

func writeSynced(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o640)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
