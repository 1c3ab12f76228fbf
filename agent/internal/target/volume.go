// Package target does a job's UPLOADING and CONFIGURING on the target side:
// it creates a volume per kept disk on the primary storage (a qcow2 file on
// local or NFS storage, an RBD image on Ceph, a logical volume on shared
// block storage), copies the cache image onto it (into a qcow2 file
// directly, direct.go; through qemu-nbd otherwise), and
// defines (and by default starts) the libvirt domain. Rollback removes all
// of it again, in any phase, as often as it is called.
package target

import (
	"context"
	"errors"
	"fmt"
	"path"
	"path/filepath"
	"regexp"
	"strconv"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// Volume formats.
const (
	FormatQcow2 = "qcow2"
	FormatRaw   = "raw"
)

// ErrBadStorage: a primary storage or a name cannot hold a volume.
var ErrBadStorage = errors.New("unusable primary storage")

// safeName is what job IDs and disk names may be: they end up in file
// names, RBD image names and LVM names.
var safeName = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.+-]*$`)

// Volume is one target disk on primary storage. NameVolume computes it; the
// names are deterministic, so a restarted job or a rollback after an
// agent crash finds the same volume again.
type Volume struct {
	Type ferryv1.PrimaryStorageType
	// Format is qcow2 for local and nfs storage, raw otherwise.
	Format string
	// Size is the virtual size in bytes.
	Size int64
	// Path is what QEMU opens: the qcow2 file, the block device, or
	// "rbd:pool/image".
	Path string
	// Dir is the job's directory holding the file (local, nfs).
	Dir string
	// Pool and Image name the RBD image (ceph).
	Pool, Image string
	// VolumeGroup and LogicalVolume name the LV (sharedblock).
	VolumeGroup, LogicalVolume string
}

// NameVolume names the volume of one disk of a job on a primary storage:
//
//	local, nfs   <path>/<job>/<disk>.qcow2   (qcow2)
//	ceph         rbd:<pool>/ferry-<job>-<disk> (raw)
//	sharedblock  /dev/<vg>/ferry-<job>-<disk>  (raw)
//
// jobID may be the job's resource name (migrationJobs/<id>).
func NameVolume(storage *ferryv1.PrimaryStorage, jobID, disk string, size int64) (Volume, error) {
	job := path.Base(jobID)
	if !safeName.MatchString(job) || !safeName.MatchString(disk) {
		return Volume{}, fmt.Errorf("%w: job %q or disk %q is not a safe volume name", ErrBadStorage, jobID, disk)
	}
	if size <= 0 {
		return Volume{}, fmt.Errorf("%w: disk %s has size %d", ErrBadStorage, disk, size)
	}
	v := Volume{Type: storage.GetType(), Size: size}
	name := "ferry-" + job + "-" + disk
	switch v.Type {
	case ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_LOCAL, ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_NFS:
		if !filepath.IsAbs(storage.GetPath()) {
			return Volume{}, fmt.Errorf("%w: %s has no absolute path", ErrBadStorage, storage.GetName())
		}
		v.Format = FormatQcow2
		v.Dir = filepath.Join(storage.GetPath(), job)
		v.Path = filepath.Join(v.Dir, disk+".qcow2")
	case ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_CEPH:
		if !safeName.MatchString(storage.GetCephPool()) {
			return Volume{}, fmt.Errorf("%w: %s has no usable ceph pool", ErrBadStorage, storage.GetName())
		}
		v.Format, v.Pool, v.Image = FormatRaw, storage.GetCephPool(), name
		v.Path = "rbd:" + v.Pool + "/" + v.Image
	case ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_SHAREDBLOCK:
		if !safeName.MatchString(storage.GetVolumeGroup()) {
			return Volume{}, fmt.Errorf("%w: %s has no usable volume group", ErrBadStorage, storage.GetName())
		}
		v.Format, v.VolumeGroup, v.LogicalVolume = FormatRaw, storage.GetVolumeGroup(), name
		v.Path = "/dev/" + v.VolumeGroup + "/" + v.LogicalVolume
	default:
		return Volume{}, fmt.Errorf("%w: %s has type %s", ErrBadStorage, storage.GetName(), v.Type)
	}
	return v, nil
}

// ZeroInitialized reports whether a new volume reads as zeros, so that the
// upload may skip the source's holes: true for qcow2 files and RBD images,
// false for logical volumes, which keep what their extents held before.
func (v Volume) ZeroInitialized() bool {
	return v.Type != ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_SHAREDBLOCK
}

// BlockDevice reports whether the volume is a host block device.
func (v Volume) BlockDevice() bool {
	return v.Type == ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_SHAREDBLOCK
}

// CreateCommands are the commands that create the volume, in order.
func (v Volume) CreateCommands() [][]string {
	size := strconv.FormatInt(v.Size, 10)
	switch {
	case v.Dir != "":
		return [][]string{
			{"mkdir", "-p", v.Dir},
			// Metadata preallocated: the upload writes the file directly
			// (direct.go). In clusters of 2 MiB, the most qcow2 allows:
			// measured here, a 64 GiB volume is preallocated in 0.27 s
			// against 8.9 s in clusters of 64 KiB (32 times the L2
			// tables, each written and synced), which the copy waited for.
			{"qemu-img", "create", "-q", "-f", FormatQcow2, "-o", "preallocation=metadata,cluster_size=2M", v.Path, size},
		}
	case v.Pool != "":
		return [][]string{{"qemu-img", "create", "-q", "-f", FormatRaw, v.Path, size}}
	case v.VolumeGroup != "":
		return [][]string{{"lvcreate", "-y", "-L", size + "b", "-n", v.LogicalVolume, v.VolumeGroup}}
	}
	return nil
}

// DeleteCommands are the commands that delete the volume, in order.
func (v Volume) DeleteCommands() [][]string {
	switch {
	case v.Dir != "":
		return [][]string{
			{"rm", "-f", v.Path},
			{"rmdir", "--ignore-fail-on-non-empty", v.Dir},
		}
	case v.Pool != "":
		return [][]string{{"rbd", "rm", v.Pool + "/" + v.Image}}
	case v.VolumeGroup != "":
		return [][]string{{"lvremove", "-y", v.VolumeGroup + "/" + v.LogicalVolume}}
	}
	return nil
}

// Create creates the volume. A leftover volume of the same name (from an
// attempt that crashed before its rollback) is deleted and created anew;
// a qcow2 file is simply overwritten by qemu-img.
func (v Volume) Create(ctx context.Context, r Commander) error {
	cmds := v.CreateCommands()
	if cmds == nil {
		return fmt.Errorf("%w: volume %s has no storage type", ErrBadStorage, v.Path)
	}
	for _, argv := range cmds {
		out, err := r.Run(ctx, argv[0], argv[1:]...)
		if err != nil && outputHas(out, err, "already exists", "file exists") {
			if derr := v.Delete(ctx, r); derr != nil {
				return fmt.Errorf("create volume %s: %w", v.Path, derr)
			}
			_, err = r.Run(ctx, argv[0], argv[1:]...)
		}
		if err != nil {
			return fmt.Errorf("create volume %s: %w", v.Path, err)
		}
	}
	return nil
}

// Delete deletes the volume; a volume that does not exist is no error.
func (v Volume) Delete(ctx context.Context, r Commander) error {
	for _, argv := range v.DeleteCommands() {
		out, err := r.Run(ctx, argv[0], argv[1:]...)
		if err != nil && !outputHas(out, err, "no such file", "not found", "failed to find", "does not exist") {
			return fmt.Errorf("delete volume %s: %w", v.Path, err)
		}
	}
	return nil
}

// ServeArgs is the qemu-nbd command line that serves the volume, writable,
// on a unix socket, until it is sent SIGTERM.
func (v Volume) ServeArgs(socket string) []string {
	args := []string{"qemu-nbd", "--persistent", "--shared=8", "--socket=" + socket, "--format=" + v.Format}
	if v.BlockDevice() {
		args = append(args, "--cache=none", "--aio=native")
	} else {
		args = append(args, "--cache=writeback")
	}
	return append(args, "--discard=unmap", v.Path)
}
