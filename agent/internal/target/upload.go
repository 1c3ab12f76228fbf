package target

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
	"github.com/ferry-v2v/ferry/pkg/nbd"
)

// Endpoint is an NBD export on a unix socket, or on TCP (a volume another
// host's agent serves over the migration network) with TLS.
type Endpoint struct {
	Socket string
	// Addr, instead of Socket, is a TCP host:port.
	Addr string
	// TLS, with Addr, is the client configuration of NBD STARTTLS
	// (tlsutil.PeerClientConfig).
	TLS *tls.Config
	// Export is the export name; qemu-nbd's default is "".
	Export string
}

// URI is the endpoint as an NBD URI (nbd+unix:///export?socket=path,
// nbds://host:port/export with TLS, nbd://host:port/export without).
func (e Endpoint) URI() string {
	if e.Addr != "" {
		scheme := "nbd"
		if e.TLS != nil {
			scheme = "nbds"
		}
		return (&url.URL{Scheme: scheme, Host: e.Addr, Path: "/" + e.Export}).String()
	}
	u := url.URL{Scheme: "nbd+unix", Path: "/" + e.Export, RawQuery: "socket=" + e.Socket}
	return u.String()
}

// dial connects to the endpoint.
func (e Endpoint) dial(ctx context.Context, opts nbd.Options) (*nbd.Client, error) {
	opts.ExportName = e.Export
	if e.Addr != "" {
		opts.TLS = e.TLS
		return nbd.Dial(ctx, "tcp", e.Addr, opts)
	}
	return nbd.Dial(ctx, "unix", e.Socket, opts)
}

// CopyOptions tune one copy.
type CopyOptions struct {
	// DstZeroed says the destination reads as zeros already, so the
	// source's holes and zero extents need not be written.
	DstZeroed bool
	// Progress, when set, is called with the data bytes done out of the
	// data bytes to copy.
	Progress func(done, total int64)
}

// Copier copies an NBD export onto another: only the source's data
// extents travel (zeroes are written as NBD write-zeroes unless the
// destination is zeroed already), under the migration server's upstream
// bandwidth limit.
type Copier interface {
	Copy(ctx context.Context, src, dst Endpoint, opts CopyOptions) error
}

// UploadDeps are an Uploader's collaborators. Commander defaults to
// ExecCommander, Copier to an NBDCopier without limit (pass one with the
// migration server's upstream Limiter), QemuNBD to "qemu-nbd" on PATH,
// TempDir to os.TempDir(), Log to discarding.
type UploadDeps struct {
	Commander Commander
	Copier    Copier
	QemuNBD   string
	TempDir   string
	Log       *slog.Logger
	// Fence, when set, is asked right before the volume is created and
	// before data is written to it (runner.Job.Fence); an error stops the
	// upload without that write.
	Fence func(ctx context.Context, write string) error
}

// Uploader moves cache images onto target volumes.
type Uploader struct {
	cmds    Commander
	copier  Copier
	qemuNBD string
	tempDir string
	log     *slog.Logger
	fenceFn func(ctx context.Context, write string) error
}

// NewUploader returns an Uploader.
func NewUploader(d UploadDeps) *Uploader {
	u := &Uploader{cmds: d.Commander, copier: d.Copier, qemuNBD: d.QemuNBD, tempDir: d.TempDir, log: d.Log, fenceFn: d.Fence}
	if u.cmds == nil {
		u.cmds = ExecCommander{Log: d.Log}
	}
	if u.copier == nil {
		u.copier = &NBDCopier{Log: d.Log}
	}
	if u.qemuNBD == "" {
		u.qemuNBD = "qemu-nbd"
	}
	if u.log == nil {
		u.log = slog.New(slog.DiscardHandler)
	}
	u.log = u.log.With("component", "upload")
	return u
}

// Upload creates vol and copies the NBD export src onto it: the volume is
// served writable by a qemu-nbd of its own on a unix socket for the length
// of the copy. The volume is left in place when the upload fails; the
// job's Rollback deletes it.
func (u *Uploader) Upload(ctx context.Context, src Endpoint, vol Volume, progress func(done, total int64)) error {
	if err := u.fence(ctx, "create volume "+vol.Path); err != nil {
		return err
	}
	if err := vol.Create(ctx, u.cmds); err != nil {
		return err
	}
	// Serving the volume writable is the upload's first write to it.
	if err := u.fence(ctx, "upload onto volume "+vol.Path); err != nil {
		return err
	}
	dir, err := os.MkdirTemp(u.tempDir, "ferry-upload-")
	if err != nil {
		return fmt.Errorf("upload %s: %w", vol.Path, err)
	}
	defer os.RemoveAll(dir)
	srv, err := u.serve(ctx, vol, filepath.Join(dir, "nbd.sock"), false)
	if err != nil {
		return fmt.Errorf("upload %s: %w", vol.Path, err)
	}
	start := time.Now()
	err = u.copier.Copy(ctx, src, Endpoint{Socket: srv.Socket()}, CopyOptions{DstZeroed: vol.ZeroInitialized(), Progress: progress})
	if cerr := srv.Stop(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("upload %s: %w", vol.Path, err)
	}
	u.log.InfoContext(ctx, "uploaded", "volume", vol.Path, "seconds", time.Since(start).Seconds())
	return nil
}

func (u *Uploader) fence(ctx context.Context, write string) error {
	if u.fenceFn == nil {
		return nil
	}
	return u.fenceFn(ctx, write)
}

// serve starts qemu-nbd (the cache package's one manager of qemu-nbd
// processes) on vol, writable unless readOnly, and waits until it
// completes an NBD handshake.
func (u *Uploader) serve(ctx context.Context, vol Volume, socket string, readOnly bool) (*cache.Server, error) {
	argv := vol.ServeArgs(socket)
	if readOnly {
		argv = append([]string{argv[0], "--read-only"}, argv[1:]...)
	}
	srv, err := cache.StartServer(cache.ServerConfig{Program: u.qemuNBD, Args: argv[1:], Socket: socket})
	if err != nil {
		return nil, err
	}
	if err := srv.Ready(ctx); err != nil {
		_ = srv.Stop()
		return nil, err
	}
	u.log.DebugContext(ctx, "serving volume", "volume", vol.Path, "socket", socket)
	return srv, nil
}
