package bundle

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/ferry-v2v/ferry/pkg/nbd"
)

// readChunk is the read size of HashContent: 1 MiB, which QEMU 7.2's NBD
// server serves without faulting in fresh buffers.
const readChunk = 1 << 20

// zeroes is hashed for ranges the image reports as zeroes.
var zeroes = make([]byte, readChunk)

// ImageOpts as HashContent's format says path is a qemu --image-opts
// string rather than a file.
const ImageOpts = "image-opts"

// HashContent is the SHA-256 of an image's content as a guest reads it
// (what `qemu-img convert -O raw` writes) and its virtual size. The image
// is served read-only by qemu-nbd (Debian qemu-utils); ranges it reports
// as zeroes are hashed without being read.
func HashContent(ctx context.Context, path, format string) (string, int64, error) {
	img, err := Open(ctx, path, format)
	if err != nil {
		return "", 0, err
	}
	defer img.Close()
	sum, err := hashExport(ctx, img.Client)
	if err != nil {
		return "", 0, fmt.Errorf("read %s: %w", path, err)
	}
	return sum, img.Client.Size(), nil
}

// Image is an image served read-only by qemu-nbd, and a client of it.
type Image struct {
	Client *nbd.Client
	cancel context.CancelFunc
	exited chan error
	dir    string
}

// Open serves an image read-only with qemu-nbd on a private unix socket
// and connects to it; format is qemu's (qcow2, raw, vmdk, vhdx) or
// ImageOpts. Close stops both.
func Open(ctx context.Context, path, format string) (*Image, error) {
	dir, err := os.MkdirTemp("", "ferry-image-")
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(dir, "nbd.sock")
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	args := []string{"--read-only", "--shared=1", "--socket=" + sock}
	if format == ImageOpts {
		args = append(args, "--image-opts", path)
	} else {
		args = append(args, "--format="+format, path)
	}
	cmd := exec.CommandContext(sctx, "qemu-nbd", args...)
	out := &tail{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		cancel()
		os.RemoveAll(dir)
		return nil, fmt.Errorf("qemu-nbd %s: %w", path, err)
	}
	img := &Image{cancel: cancel, exited: make(chan error, 1), dir: dir}
	go func() { img.exited <- cmd.Wait() }()
	c, err := dial(ctx, sock, img.exited, out)
	if err != nil {
		img.Close()
		return nil, fmt.Errorf("qemu-nbd %s: %w", path, err)
	}
	img.Client = c
	return img, nil
}

// Close disconnects and stops qemu-nbd.
func (i *Image) Close() error {
	if i.Client != nil {
		i.Client.Close()
	}
	i.cancel()
	<-i.exited
	return os.RemoveAll(i.dir)
}

// exitedAgain puts back what the server's exit said, for Close.
func exitedAgain(exited chan error, err error) { exited <- err }

func dial(ctx context.Context, sock string, exited chan error, out *tail) (*nbd.Client, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := nbd.Dial(ctx, "unix", sock, nbd.Options{MaxRequest: readChunk})
		if err == nil {
			return c, nil
		}
		select {
		case werr := <-exited:
			exitedAgain(exited, werr)
			return nil, fmt.Errorf("exited: %v: %s", werr, out.String())
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return nil, err
		}
	}
}

func hashExport(ctx context.Context, c *nbd.Client) (string, error) {
	h := sha256.New()
	size := c.Size()
	buf := make([]byte, readChunk)
	var exts []nbd.Extent
	if c.CanBlockStatus() {
		var err error
		if exts, err = c.Extents(ctx, 0, size); err != nil {
			return "", err
		}
	} else {
		exts = []nbd.Extent{{Offset: 0, Length: size}}
	}
	for _, e := range exts {
		for off := e.Offset; off < e.End(); {
			n := min(int64(readChunk), e.End()-off)
			if e.Zero() {
				h.Write(zeroes[:n])
			} else {
				if err := c.ReadAt(ctx, buf[:n], off); err != nil {
					return "", err
				}
				h.Write(buf[:n])
			}
			off += n
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// HashFile is the SHA-256 of a file's bytes and its length.
func HashFile(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// tail keeps the last 4 KiB written, for error messages.
type tail struct{ b []byte }

func (t *tail) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > 4096 {
		t.b = t.b[len(t.b)-4096:]
	}
	return len(p), nil
}

func (t *tail) String() string { return string(t.b) }
