package cache

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/ferry-v2v/ferry/pkg/nbd"
)

// Export serves a finished cache image read-only, for the upload.
type Export struct {
	path   string
	format string
	srv    *Server
	nbd    *nbd.Client
}

// OpenExport serves the cache image of disk in dir read-only on a unix
// socket and connects to it. The image must exist: CONVERTING made it.
// A disk PREPARING converted is served from its overlay (PreparedPath).
func OpenExport(ctx context.Context, dir, disk string, log *slog.Logger) (*Export, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	path, format, err := ImagePath(dir, disk)
	if err != nil {
		return nil, err
	}
	if Prepared(dir, disk) {
		path, format = PreparedPath(dir, disk), FormatQcow2
	}
	e, err := serveReadOnly(ctx, path, format, filepath.Join(dir, disk+".export.pid"), log)
	if err != nil {
		return nil, fmt.Errorf("cache: export %s: %w", path, err)
	}
	return e, nil
}

func serveReadOnly(ctx context.Context, path, format, pidFile string, log *slog.Logger) (*Export, error) {
	if err := StopStale(pidFile, path); err != nil {
		return nil, err
	}
	sockDir, err := os.MkdirTemp("", "ferry-export-")
	if err != nil {
		return nil, err
	}
	socket := filepath.Join(sockDir, "nbd.sock")
	srv, err := StartServer(ServerConfig{Socket: socket, PidFile: pidFile,
		Args: []string{"--persistent", "--socket=" + socket, "--discard=unmap", "--read-only", "--shared=4", "--format=" + format, path}})
	if err != nil {
		_ = os.RemoveAll(sockDir)
		return nil, err
	}
	srv.sockDir = sockDir
	c, err := srv.Dial(ctx, log)
	if err != nil {
		srv.abandon() // a cancelled job must not wait for it
		return nil, err
	}
	return &Export{path: path, format: format, srv: srv, nbd: c}, nil
}

// Image is the image file the export serves and its format (FormatQcow2
// or FormatRaw): other readers may open it read-only beside the export.
func (e *Export) Image() (path, format string) { return e.path, e.format }

// Socket is the unix socket qemu-nbd serves the image on (export "").
func (e *Export) Socket() string { return e.srv.socket }

// Client is a connection to the export.
func (e *Export) Client() *nbd.Client { return e.nbd }

// Size is the disk's size.
func (e *Export) Size() int64 { return e.nbd.Size() }

// Close disconnects and stops qemu-nbd.
func (e *Export) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	_ = e.nbd.Disconnect(ctx)
	if err := e.srv.Stop(); err != nil {
		return fmt.Errorf("cache: stop the export of %s: %w", e.path, err)
	}
	return nil
}
