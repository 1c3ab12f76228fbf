package cache

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/ferry-v2v/ferry/pkg/durable"
	"github.com/ferry-v2v/ferry/pkg/nbd"
)

// An upload beside the copy reads what the copy has made durable in a
// cache image while the copy still writes it. Only the writer's own
// qemu-nbd may serve a qcow2 image that is being written (a second
// qemu-nbd would see stale metadata), so the writer serves a few
// connections (--shared) and DialWriting hands one to the upload.

// ErrNotWriting: no copy of this process has the image open for writing.
var ErrNotWriting = errors.New("cache: image not open for writing")

// readers is how many connections the writer's qemu-nbd serves beside
// the copy's own.
const readers = 3

var (
	writingMu sync.Mutex
	writing   = map[string]*Image{} // by dir/disk
)

func writingKey(dir, disk string) string { return filepath.Join(filepath.Clean(dir), disk) }

func register(dir, disk string, img *Image) {
	writingMu.Lock()
	defer writingMu.Unlock()
	writing[writingKey(dir, disk)] = img
}

func unregister(dir, disk string, img *Image) {
	writingMu.Lock()
	defer writingMu.Unlock()
	if writing[writingKey(dir, disk)] == img {
		delete(writing, writingKey(dir, disk))
	}
}

// DialWriting connects to the qemu-nbd of disk's cache image in dir while
// a copy of this process has it open for writing: ErrNotWriting when none
// has. Reads of chunks the copy's checkpoint marks done return what the
// image durably holds. The export may be longer than the disk (a
// compressed image is served in whole clusters). The caller must call
// release when done with the connection: closing the image waits for
// that (at most readerWait), so a read in progress is not cut off.
func DialWriting(ctx context.Context, dir, disk string, log *slog.Logger) (c *nbd.Client, release func(), err error) {
	img, hold, err := holdWriting(dir, disk)
	if err != nil {
		return nil, nil, err
	}
	c, err = img.srv.Dial(ctx, log)
	if err != nil {
		hold()
		return nil, nil, fmt.Errorf("%w: %w", ErrNotWriting, err)
	}
	return c, func() { c.Close(); hold() }, nil
}

// HoldWriting is DialWriting for another program: it returns the unix
// socket the copy's qemu-nbd serves the image on (export ""), which stays
// served until release is called (or readerWait has passed after the copy
// closed the image).
func HoldWriting(dir, disk string) (socket string, release func(), err error) {
	img, hold, err := holdWriting(dir, disk)
	if err != nil {
		return "", nil, err
	}
	return img.srv.Socket(), hold, nil
}

func holdWriting(dir, disk string) (*Image, func(), error) {
	writingMu.Lock()
	img := writing[writingKey(dir, disk)]
	if img != nil {
		img.readers.Add(1)
	}
	writingMu.Unlock()
	if img == nil {
		return nil, nil, ErrNotWriting
	}
	var once sync.Once
	return img, func() { once.Do(img.readers.Done) }, nil
}

// readerWait bounds how long closing an image waits for its readers.
const readerWait = time.Minute

// waitReaders waits until the readers DialWriting handed out are
// released, at most readerWait. The image is unregistered already.
func (i *Image) waitReaders() {
	done := make(chan struct{})
	go func() { i.readers.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(readerWait):
		i.log.Warn("closing the cache image under a reader that did not finish")
	}
}

// GenerationPath is where the generation of disk's cache image in dir is
// kept: a random name given to each image when it is created, so that
// what was uploaded from an earlier image is never taken for this one's.
func GenerationPath(dir, disk string) string { return filepath.Join(dir, disk+".gen") }

// UploadCheckpointPath is where the upload of disk's cache image in dir
// records which chunks are durably on the target volume. It describes the
// image of one generation; a new image removes it.
func UploadCheckpointPath(dir, disk string) string { return filepath.Join(dir, disk+".upload") }

// Generation returns the generation of disk's cache image in dir, or
// fs.ErrNotExist when no image has one yet.
func Generation(dir, disk string) (string, error) {
	b, err := os.ReadFile(GenerationPath(dir, disk))
	if err != nil {
		return "", err
	}
	g := strings.TrimSpace(string(b))
	if g == "" {
		return "", fmt.Errorf("cache: empty generation of %s: %w", disk, fs.ErrNotExist)
	}
	return g, nil
}

// newGeneration gives disk's image in dir a new generation, durably,
// after removing what described the image before it.
func newGeneration(dir, disk string) error {
	if err := removeAll(UploadCheckpointPath(dir, disk)); err != nil {
		return err
	}
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return err
	}
	return durable.WriteFile(GenerationPath(dir, disk), []byte(hex.EncodeToString(b[:])+"\n"), 0o600)
}

func removeAll(paths ...string) error {
	for _, p := range paths {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("cache: remove %s: %w", p, err)
		}
	}
	return nil
}

// NewGeneration gives disk's image in dir a new generation, as a new
// image gets: what was uploaded from it counts no more, so an upload
// following it starts over on a volume created again. A copy that forgot
// chunks of its checkpoint (the source changed under them) calls it.
func NewGeneration(dir, disk string) error { return newGeneration(dir, disk) }
