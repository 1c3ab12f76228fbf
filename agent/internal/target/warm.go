package target

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
	"github.com/ferry-v2v/ferry/agent/internal/pipeline"
	"github.com/ferry-v2v/ferry/agent/internal/runner"
	"github.com/ferry-v2v/ferry/pkg/nbd"
)

var _ runner.DeltaApplier = (*Driver)(nil)

// deltaPiece is the most one delta write moves; deltaInFlight how many
// run at once.
const (
	deltaPiece    = 1 << 20
	deltaInFlight = 8
)

// ApplyDelta writes the extents a precopy round rewrote in the cache
// images onto the job's volumes (made by the first round's upload), under
// the upstream limit; with verify it reads each back from the volume and
// compares it with the cache. Volumes on another host are written through
// the exports that host's agent serves (applyDeltaRemote). A round with no
// extents opens nothing. It returns the bytes written.
func (d *Driver) ApplyDelta(ctx context.Context, job *runner.Job, disks []runner.DiskDelta, verify bool) (int64, error) {
	var todo []runner.DiskDelta
	for _, dd := range disks {
		if len(dd.Extents) > 0 {
			todo = append(todo, dd)
		}
	}
	if len(todo) == 0 {
		return 0, nil
	}
	if th := d.uploadHostOf(job); th != "" {
		return d.applyDeltaRemote(ctx, job, th, todo, verify)
	}
	vols, err := volumes(job)
	if err != nil {
		return 0, err
	}
	up := NewUploader(UploadDeps{Commander: d.opts.Commander, Log: job.Log, Fence: job.Fence})
	var total int64
	for _, dd := range todo {
		i := diskIndex(job, dd.Disk)
		if i < 0 {
			return total, fmt.Errorf("the job has no disk %s", dd.Disk)
		}
		n, err := applyDisk(ctx, job, up, dd, vols[i], verify)
		total += n
		if err != nil {
			return total, fmt.Errorf("disk %s: %w", dd.Disk, err)
		}
	}
	return total, nil
}

func diskIndex(job *runner.Job, disk string) int {
	for i, d := range job.Assignment.GetJob().GetTarget().GetDisks() {
		if d.GetSourceDisk() == disk {
			return i
		}
	}
	return -1
}

// applyDisk copies one disk's delta from its cache image onto its volume,
// served by a qemu-nbd of this host.
func applyDisk(ctx context.Context, job *runner.Job, up *Uploader, dd runner.DiskDelta, vol Volume, verify bool) (int64, error) {
	if err := up.fence(ctx, "write a precopy round onto volume "+vol.Path); err != nil {
		return 0, err
	}
	dir, err := os.MkdirTemp(up.tempDir, "ferry-delta-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	srv, err := up.serve(ctx, vol, filepath.Join(dir, "nbd.sock"), false)
	if err != nil {
		return 0, err
	}
	defer srv.Stop()
	dst, err := nbd.Dial(ctx, "unix", srv.Socket(), nbd.Options{Logger: job.Log})
	if err != nil {
		return 0, fmt.Errorf("open volume %s: %w", vol.Path, err)
	}
	defer dst.Close()
	written, err := writeDelta(ctx, job, dd, dst, vol.Path, verify)
	if err != nil {
		return 0, err
	}
	if err := dst.Disconnect(ctx); err != nil {
		return 0, err
	}
	if err := srv.Stop(); err != nil {
		return 0, err
	}
	return written, nil
}

// writeDelta copies dd's extents from its cache image onto dst, the
// volume at where, deltaInFlight pieces at a time, and flushes it.
func writeDelta(ctx context.Context, job *runner.Job, dd runner.DiskDelta, dst *nbd.Client, where string, verify bool) (int64, error) {
	start := time.Now()
	exp, err := cache.OpenExport(ctx, job.CacheDir, dd.Disk, job.Log)
	if err != nil {
		return 0, err
	}
	defer exp.Close()
	src := exp.Client()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(deltaInFlight)
	var written int64
	for _, e := range dd.Extents {
		for off := e.Offset; off < e.Offset+e.Length; off += deltaPiece {
			n := min(int64(deltaPiece), e.Offset+e.Length-off)
			written += n
			g.Go(func() error {
				return applyPiece(gctx, job, src, dst, pipeline.Extent{Offset: off, Length: n, Zero: e.Zero}, verify)
			})
		}
	}
	if err := g.Wait(); err != nil {
		return 0, err
	}
	if err := dst.Flush(ctx); err != nil {
		return 0, fmt.Errorf("flush volume %s: %w", where, err)
	}
	job.Log.Info("precopy round written onto the volume", "disk", dd.Disk, "volume", where, "bytes", written,
		"extents", len(dd.Extents), "verified", verify, "seconds", time.Since(start).Seconds())
	return written, nil
}

// applyPiece writes one piece of a delta onto the volume and, with
// verify, reads it back.
func applyPiece(ctx context.Context, job *runner.Job, src, dst *nbd.Client, e pipeline.Extent, verify bool) error {
	if err := job.Upstream.WaitN(ctx, int(e.Length)); err != nil {
		return err
	}
	want := make([]byte, e.Length)
	if e.Zero {
		if err := dst.WriteZeroes(ctx, e.Offset, e.Length, 0); err != nil {
			return fmt.Errorf("zero %d bytes at %d: %w", e.Length, e.Offset, err)
		}
	} else {
		if err := src.ReadAt(ctx, want, e.Offset); err != nil {
			return fmt.Errorf("read the cache at %d: %w", e.Offset, err)
		}
		if err := dst.WriteAt(ctx, want, e.Offset, false); err != nil {
			return fmt.Errorf("write %d bytes at %d: %w", e.Length, e.Offset, err)
		}
	}
	if !verify {
		return nil
	}
	if err := dst.Flush(ctx); err != nil {
		return err
	}
	got := make([]byte, e.Length)
	if err := dst.ReadAt(ctx, got, e.Offset); err != nil {
		return fmt.Errorf("read back %d bytes at %d: %w", e.Length, e.Offset, err)
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("%w: the volume differs from the cache in the %d bytes at %d", pipeline.ErrMismatch, e.Length, e.Offset)
	}
	return nil
}

var _ runner.DeltaSinker = (*Driver)(nil)

// OpenDeltaSink serves each of the job's volumes writable and connects to
// it, ahead of the cutover's stop of the source, so the last delta goes
// from the source straight onto them (deltaSink), each piece read back as
// it is written. Volumes on another host are those its agent serves
// (openRemoteSink).
func (d *Driver) OpenDeltaSink(ctx context.Context, job *runner.Job) (runner.DeltaSink, error) {
	if th := d.uploadHostOf(job); th != "" {
		return d.openRemoteSink(ctx, job, th)
	}
	vols, err := volumes(job)
	if err != nil {
		return nil, err
	}
	up := NewUploader(UploadDeps{Commander: d.opts.Commander, Log: job.Log, Fence: job.Fence})
	s := &deltaSink{job: job, disks: map[string]*sinkDisk{}}
	if s.dir, err = os.MkdirTemp(up.tempDir, "ferry-cutover-"); err != nil {
		return nil, err
	}
	for i, disk := range job.Assignment.GetJob().GetTarget().GetDisks() {
		if err := s.open(ctx, up, disk.GetSourceDisk(), vols[i], i); err != nil {
			return nil, errors.Join(err, s.Close())
		}
	}
	return s, nil
}

// deltaSink writes the cutover's pieces onto the volumes, reading each
// back right after its write (the read-back sees what the volume's
// server holds, as one after a flush would); Finish flushes each volume
// once.
type deltaSink struct {
	job   *runner.Job
	dir   string
	disks map[string]*sinkDisk
}

type sinkDisk struct {
	vol Volume
	srv *cache.Server // nil for a volume another host serves
	nbd *nbd.Client

	mu      sync.Mutex
	written int64
}

func (s *deltaSink) open(ctx context.Context, up *Uploader, disk string, vol Volume, i int) error {
	if err := up.fence(ctx, "write the cutover's delta onto volume "+vol.Path); err != nil {
		return err
	}
	srv, err := up.serve(ctx, vol, filepath.Join(s.dir, fmt.Sprintf("%d.sock", i)), false)
	if err != nil {
		return err
	}
	c, err := nbd.Dial(ctx, "unix", srv.Socket(), nbd.Options{Logger: s.job.Log})
	if err != nil {
		return errors.Join(fmt.Errorf("open volume %s: %w", vol.Path, err), srv.Stop())
	}
	s.disks[disk] = &sinkDisk{vol: vol, srv: srv, nbd: c}
	return nil
}

// Write puts one piece onto disk's volume under the upstream limit and
// reads it back.
func (s *deltaSink) Write(ctx context.Context, disk string, e pipeline.Extent, data []byte) error {
	sd := s.disks[disk]
	if sd == nil {
		return fmt.Errorf("the job has no disk %s", disk)
	}
	if !e.Zero && int64(len(data)) != e.Length {
		return fmt.Errorf("disk %s: a piece of %d bytes at %d came with %d", disk, e.Length, e.Offset, len(data))
	}
	if err := s.job.Upstream.WaitN(ctx, int(e.Length)); err != nil {
		return err
	}
	if e.Zero {
		if err := sd.nbd.WriteZeroes(ctx, e.Offset, e.Length, 0); err != nil {
			return fmt.Errorf("disk %s: zero %d bytes at %d: %w", disk, e.Length, e.Offset, err)
		}
	} else if err := sd.nbd.WriteAt(ctx, data, e.Offset, false); err != nil {
		return fmt.Errorf("disk %s: write %d bytes at %d: %w", disk, e.Length, e.Offset, err)
	}
	got := make([]byte, e.Length)
	if err := sd.nbd.ReadAt(ctx, got, e.Offset); err != nil {
		return fmt.Errorf("disk %s: read back %d bytes at %d: %w", disk, e.Length, e.Offset, err)
	}
	if !samePiece(got, e, data) {
		return fmt.Errorf("%w: volume %s differs from what was written in the %d bytes at %d", pipeline.ErrMismatch,
			sd.vol.Path, e.Length, e.Offset)
	}
	sd.mu.Lock()
	sd.written += e.Length
	sd.mu.Unlock()
	return nil
}

// samePiece reports whether got, read back, is the piece e written with
// data (zeroes when e.Zero).
func samePiece(got []byte, e pipeline.Extent, data []byte) bool {
	if e.Zero {
		return !slices.ContainsFunc(got, func(b byte) bool { return b != 0 })
	}
	return bytes.Equal(got, data)
}

// Finish flushes every volume.
func (s *deltaSink) Finish(ctx context.Context) (int64, error) {
	start := time.Now()
	var total int64
	for disk, sd := range s.disks {
		if err := sd.nbd.Flush(ctx); err != nil {
			return total, fmt.Errorf("disk %s: flush volume %s: %w", disk, sd.vol.Path, err)
		}
		total += sd.written
	}
	s.job.Log.Info("cutover delta on the volumes, verified and flushed", "bytes", total, "flush_seconds", time.Since(start).Seconds())
	return total, nil
}

// Close disconnects from the volumes and stops their servers.
func (s *deltaSink) Close() error {
	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, sd := range s.disks {
		if err := sd.nbd.Disconnect(ctx); err != nil {
			sd.nbd.Close()
		}
		if sd.srv == nil {
			continue
		}
		if err := sd.srv.Stop(); err != nil {
			errs = append(errs, fmt.Errorf("stop the server of volume %s: %w", sd.vol.Path, err))
		}
	}
	s.disks = nil
	if s.dir != "" {
		errs = append(errs, os.RemoveAll(s.dir))
	}
	return errors.Join(errs...)
}
