// Package cache keeps the cache image of each disk of a job in
// <cache_path>/<job-id>/: a zstd-compressed qcow2 written through qemu-nbd's
// compress filter, or a sparse raw file, served by a qemu-nbd child on a
// unix socket and written with the NBD client. Reopening an image keeps its
// data, so a restarted job continues from its cache.
package cache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/ferry-v2v/ferry/pkg/nbd"
)

// Image formats.
const (
	FormatQcow2 = "qcow2"
	FormatRaw   = "raw"
)

// Granule is the unit of writes into a cache image: the 64 KiB cluster of
// a compressed qcow2, which cannot be written in part. Every writer of a
// cache image (the extent copy of a KVM disk, the VMDK decoder of a
// VMware one) starts and ends its writes on it.
const Granule = 64 << 10

const (
	readyTimeout = 30 * time.Second
	maxSocketLen = 100 // sun_path holds 108 bytes
)

// ErrSize reports a disk size the cache cannot hold, or an existing image
// of another size.
var ErrSize = errors.New("cache: image size")

// Programs, replaceable by tests.
var (
	qemuImg = "qemu-img"
	qemuNBD = "qemu-nbd"
)

// Image is one disk's cache image, open for writing through NBD. Its
// methods are safe for concurrent use; Close ends it.
type Image struct {
	path   string
	dir    string
	disk   string
	format string
	size   int64 // the disk's size
	served int64 // the export's size: size rounded up to a cluster when compressed
	ckpt   string
	log    *slog.Logger

	srv *Server
	nbd *nbd.Client

	readers sync.WaitGroup // connections handed out by DialWriting

	closeOnce sync.Once
	closeErr  error
}

// Open opens the cache image of disk in dir, creating both when missing:
// <disk>.qcow2 (zstd-compressed clusters) when compressed, else <disk>.raw
// (sparse). size must be a positive multiple of 512. A new image starts
// all zeroes and removes any checkpoint left at CheckpointPath; an
// existing image keeps its data and must have been made for the same size.
func Open(ctx context.Context, dir, disk string, size int64, compressed bool, log *slog.Logger) (*Image, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if size <= 0 || size%512 != 0 {
		return nil, fmt.Errorf("%w: %d bytes is not a positive multiple of 512", ErrSize, size)
	}
	if disk == "" || strings.ContainsAny(disk, "/\x00") || disk == "." || disk == ".." {
		return nil, fmt.Errorf("cache: disk name %q", disk)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	img := &Image{
		format: FormatRaw, size: size, served: size, dir: dir, disk: disk,
		ckpt: CheckpointPath(dir, disk),
		log:  log.With("disk", disk),
	}
	if compressed {
		img.format = FormatQcow2
		img.served = (size + Granule - 1) / Granule * Granule
	}
	img.path = filepath.Join(dir, disk+"."+img.format)
	pidFile := filepath.Join(dir, disk+".pid")
	if err := StopStale(pidFile, imageArg(img.format, img.path)); err != nil {
		return nil, fmt.Errorf("cache: stop the stale server of %s: %w", img.path, err)
	}
	if err := img.prepare(ctx); err != nil {
		return nil, err
	}
	if err := img.serve(ctx, filepath.Join(dir, disk+".sock"), pidFile); err != nil {
		return nil, err
	}
	register(dir, disk, img)
	return img, nil
}

// Path returns the image file.
func (i *Image) Path() string { return i.path }

// Format returns FormatQcow2 or FormatRaw.
func (i *Image) Format() string { return i.format }

// Size returns the disk's size.
func (i *Image) Size() int64 { return i.size }

// CheckpointPath is where the copy's checkpoint of this image belongs; a
// newly created image removes the file found there.
func (i *Image) CheckpointPath() string { return i.ckpt }

// SumsPath is where the per-chunk checksums of the checkpoint at
// checkpoint are kept, beside it.
func SumsPath(checkpoint string) string { return checkpoint + ".sums" }

// Reset removes disk's cache image (either format), checkpoint,
// checksums, generation and upload checkpoint from the job directory dir,
// so that a copy that cannot resume (a VMware stream read again from its
// start) begins from nothing.
func Reset(dir, disk string) error {
	ckpt := CheckpointPath(dir, disk)
	for _, p := range []string{filepath.Join(dir, disk+"."+FormatRaw), filepath.Join(dir, disk+"."+FormatQcow2), ckpt, SumsPath(ckpt),
		GenerationPath(dir, disk), UploadCheckpointPath(dir, disk)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("cache: remove %s of an earlier attempt: %w", p, err)
		}
	}
	return nil
}

// CheckpointPath is where the checkpoint of disk's cache image in dir
// belongs, with the checksums the copy recorded beside it.
func CheckpointPath(dir, disk string) string { return filepath.Join(dir, disk+".ckpt") }

// prepare creates the image when it is missing, or checks its size and,
// for qcow2, grows it back to whole clusters for the compress filter.
func (i *Image) prepare(ctx context.Context) error {
	virtual, err := i.virtualSize(ctx)
	if errors.Is(err, fs.ErrNotExist) {
		return i.create(ctx)
	}
	if err != nil {
		return err
	}
	switch virtual {
	case i.served:
	case i.size:
		if err := run(ctx, qemuImg, "resize", "-q", "-f", i.format, i.path, fmt.Sprint(i.served)); err != nil {
			return fmt.Errorf("cache: grow %s to whole clusters: %w", i.path, err)
		}
	default:
		return fmt.Errorf("%w: %s holds %d bytes, the disk has %d", ErrSize, i.path, virtual, i.size)
	}
	if _, err := Generation(i.dir, i.disk); errors.Is(err, fs.ErrNotExist) {
		// An image made before generations were kept: what was uploaded
		// from it cannot be told apart, so the upload starts over.
		if err := newGeneration(i.dir, i.disk); err != nil {
			return fmt.Errorf("cache: generation of %s: %w", i.path, err)
		}
	}
	i.log.Info("reusing cache image", "path", i.path, "size", i.size)
	return nil
}

// create makes the image under a temporary name and renames it into
// place, after removing any checkpoint that described an older image.
func (i *Image) create(ctx context.Context) error {
	tmp := i.path + ".tmp"
	_ = os.Remove(tmp)
	var err error
	if i.format == FormatQcow2 {
		// Lazy refcounts spare each flush the ordered refcount writes; an
		// image left dirty by a crash is repaired when it is opened again.
		err = run(ctx, qemuImg, "create", "-q", "-f", "qcow2", "-o", "compression_type=zstd,lazy_refcounts=on",
			tmp, fmt.Sprint(i.served))
	} else {
		err = createSparse(tmp, i.size)
	}
	if err == nil {
		err = os.Remove(i.ckpt)
		if errors.Is(err, fs.ErrNotExist) {
			err = nil
		}
	}
	if err == nil {
		err = newGeneration(i.dir, i.disk)
	}
	if err == nil {
		err = os.Rename(tmp, i.path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("cache: create %s: %w", i.path, err)
	}
	i.log.Info("created cache image", "path", i.path, "size", i.size, "format", i.format)
	return nil
}

func createSparse(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// virtualSize returns the image's virtual size, fs.ErrNotExist when there
// is no image.
func (i *Image) virtualSize(ctx context.Context) (int64, error) {
	fi, err := os.Stat(i.path)
	if err != nil {
		return 0, err
	}
	if i.format == FormatRaw {
		return fi.Size(), nil
	}
	out, err := output(ctx, qemuImg, "info", "--output=json", "-f", "qcow2", i.path)
	if err != nil {
		return 0, fmt.Errorf("cache: %w", err)
	}
	var info struct {
		VirtualSize int64 `json:"virtual-size"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return 0, fmt.Errorf("cache: qemu-img info %s: %w", i.path, err)
	}
	return info.VirtualSize, nil
}

// imageArg is qemu-nbd's description of the image: the compress filter
// over qcow2, or raw.
func imageArg(format, path string) string {
	if format == FormatQcow2 {
		return "driver=compress,file.driver=qcow2,file.file.driver=file,file.file.filename=" + optValue(path)
	}
	return "driver=raw,file.driver=file,file.filename=" + optValue(path)
}

// optValue escapes s for a qemu option string, where "," separates
// options.
func optValue(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// serve starts qemu-nbd on the image and connects to it.
func (i *Image) serve(ctx context.Context, socket, pidFile string) error {
	var sockDir string
	if len(socket) > maxSocketLen {
		d, err := os.MkdirTemp("", "ferry-cache-")
		if err != nil {
			return fmt.Errorf("cache: %w", err)
		}
		sockDir, socket = d, filepath.Join(d, "nbd.sock")
	}
	srv, err := StartServer(ServerConfig{Socket: socket, PidFile: pidFile,
		Args: []string{"--persistent", "--socket=" + socket, "--discard=unmap", fmt.Sprintf("--shared=%d", 1+readers),
			"--image-opts", imageArg(i.format, i.path)}})
	if err != nil {
		if sockDir != "" {
			_ = os.RemoveAll(sockDir)
		}
		return fmt.Errorf("cache: serve %s: %w", i.path, err)
	}
	srv.sockDir = sockDir
	i.srv = srv
	i.nbd, err = srv.Dial(ctx, i.log)
	if err != nil {
		_ = srv.Stop()
		return fmt.Errorf("cache: serve %s: %w", i.path, err)
	}
	if got := i.nbd.Size(); got != i.served {
		_ = i.Close()
		return fmt.Errorf("%w: qemu-nbd serves %s as %d bytes, want %d", ErrSize, i.path, got, i.served)
	}
	i.log.Debug("serving cache image", "socket", socket, "pid", srv.cmd.Process.Pid)
	return nil
}

// Close disconnects, stops qemu-nbd (which flushes the image) and gives a
// qcow2 image back its exact size. Later calls return the first result.
func (i *Image) Close() error {
	i.closeOnce.Do(func() { i.closeErr = i.close() })
	return i.closeErr
}

func (i *Image) close() error {
	unregister(i.dir, i.disk, i)
	i.waitReaders()
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	if i.nbd != nil {
		_ = i.nbd.Disconnect(ctx)
	}
	err := i.srv.Stop()
	if err == nil && i.served != i.size {
		err = run(ctx, qemuImg, "resize", "-q", "--shrink", "-f", i.format, i.path, fmt.Sprint(i.size))
	}
	if err != nil {
		return fmt.Errorf("cache: close %s: %w", i.path, err)
	}
	return nil
}

func run(ctx context.Context, name string, args ...string) error {
	_, err := output(ctx, name, args...)
	return err
}

func output(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}
