package target

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
	"github.com/ferry-v2v/ferry/agent/internal/pipeline"
	"github.com/ferry-v2v/ferry/agent/internal/runner"
)

var _ runner.Verifier = (*Driver)(nil)

// verifyInFlight is how many chunks of a volume holding data are read
// back at once (each in requests of nbd.DefaultMaxRequest).
const verifyInFlight = 4

// verifyLogEvery is how often a running verification logs its progress.
const verifyLogEvery = 5 * time.Second

// Verify reads every uploaded volume the upload did not verify as it
// went (follower.verifyBeside) back through a read-only qemu-nbd
// and compares it, chunk by chunk, with the checksums CONVERTING recorded
// beside the cache checkpoint: ranges the volume reports as zeroes are
// checked by their block status, never read, so the time it takes follows
// the data, not the virtual size. It logs its progress every few seconds.
// A disk whose copy recorded no checksums stays unverified.
func (d *Driver) Verify(ctx context.Context, job *runner.Job) error {
	if th := d.uploadHostOf(job); th != "" {
		return d.verifyRemote(ctx, job, th)
	}
	vols, err := volumes(job)
	if err != nil {
		return err
	}
	up := NewUploader(UploadDeps{Commander: d.opts.Commander, Log: job.Log})
	for i, disk := range job.Assignment.GetJob().GetTarget().GetDisks() {
		name := disk.GetSourceDisk()
		if job.Progress.Verified(name) {
			continue // read back and matched by the upload as it went
		}
		cp, err := copySums(job, name)
		if err != nil {
			return err
		}
		if cp == nil {
			continue
		}
		start := time.Now()
		st, err := VerifyVolume(ctx, up, cp, vols[i], pipeline.VerifyOptions{
			Progress: verifyProgress(job, name, 0, cp.Size()), Limiter: job.Upstream})
		if err != nil {
			return fmt.Errorf("disk %s: %w", name, err)
		}
		job.Log.Info("disk verified", "disk", name, "volume", vols[i].Path, "read_bytes", st.ReadBytes,
			"zero_bytes", st.ZeroBytes, "seconds", time.Since(start).Seconds())
		job.Progress.SetVerified(name)
	}
	return nil
}

// beforeVerifyBeside, when set by a test, runs before each read-back.
var beforeVerifyBeside func(ctx context.Context, f *follower) error

// verifyBeside reads back the chunks uploaded and flushed since the last
// time (called when the upload waits for the copy, and by finish),
// through the volume's qemu-nbd, and compares them with the
// checksums the copy recorded for them (pipeline.VerifyChunks): the
// upload checks as it goes what Driver.Verify would check at the end, so
// that the job does not end with a pass of its own. A volume that differs
// is an error naming the offset. A chunk without a checksum stops the
// verification beside the upload; the disk is then Driver.Verify's.
func (f *follower) verifyBeside(ctx context.Context) error {
	if f.noVerify || len(f.unverified) == 0 {
		return nil
	}
	if beforeVerifyBeside != nil {
		if err := beforeVerifyBeside(ctx, f); err != nil {
			return err
		}
	}
	sums, err := pipeline.ReadSums(cache.CheckpointPath(f.job.CacheDir, f.disk))
	if err != nil {
		return err
	}
	// The sums must be those of the image the volume holds.
	if gen, err := cache.Generation(f.job.CacheDir, f.disk); err != nil || gen != f.gen {
		return nil
	}
	for _, i := range f.unverified {
		if _, ok := sums.Sum(i); !ok {
			f.noVerify = true
			f.log.DebugContext(ctx, "a chunk has no checksum: the volume is left to the verification after the upload", "chunk", i)
			return nil
		}
	}
	if err := f.openTarget(ctx); err != nil {
		return err
	}
	slices.Sort(f.unverified)
	st, err := pipeline.VerifyChunks(ctx, f.readBack(), sums, f.unverified, pipeline.VerifyOptions{
		InFlight: verifyInFlight, Progress: verifyProgress(f.job, f.disk, f.verifiedBytes, f.marks.size), Limiter: f.job.Upstream})
	if err != nil {
		return fmt.Errorf("volume %s: %w", f.vol.Path, err)
	}
	f.verifiedBytes += st.ReadBytes + st.ZeroBytes
	f.verified += len(f.unverified)
	f.unverified, f.unverifiedData = f.unverified[:0], 0
	f.log.DebugContext(ctx, "verified beside the upload", "read_bytes", st.ReadBytes, "zero_bytes", st.ZeroBytes)
	return nil
}

// copySums opens the checksums the copy of disk recorded, for a
// verification; nil, with a warning, when it recorded none (the disk is
// left unverified).
func copySums(job *runner.Job, disk string) (*pipeline.Checkpoint, error) {
	if cache.Prepared(job.CacheDir, disk) {
		job.Log.Warn("disk left unverified: PREPARING converted the guest after the copy", "disk", disk)
		return nil, nil
	}
	cp, err := pipeline.OpenCheckpoint(cache.CheckpointPath(job.CacheDir, disk))
	if errors.Is(err, fs.ErrNotExist) || (err == nil && !cp.Verifiable()) {
		job.Log.Warn("disk left unverified: its copy recorded no checksums", "disk", disk)
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("disk %s: %w", disk, err)
	}
	return cp, nil
}

// verifyProgress returns the progress callback of a verification of disk
// (pipeline.VerifyOptions.Progress): it reports base+done bytes checked of
// size to the job's progress (DiskProgress.verification), and logs.
func verifyProgress(job *runner.Job, disk string, base, size int64) func(done, total int64) {
	log := logProgress(job.Log, disk)
	return func(done, total int64) {
		log(done, total)
		job.Progress.Verifying(disk, base+done, size)
	}
}

// logProgress returns a verification progress callback that logs at most
// every verifyLogEvery.
func logProgress(log *slog.Logger, disk string) func(done, total int64) {
	var last time.Time
	return func(done, total int64) {
		if now := time.Now(); now.Sub(last) >= verifyLogEvery && done < total {
			last = now
			log.Info("verifying disk", "disk", disk, "checked_bytes", done, "total_bytes", total)
		}
	}
}

// VerifyVolume serves vol read-only with qemu-nbd and compares it with
// the checksums of cp (pipeline.VerifyWith), verifyInFlight chunks of data
// at a time unless opts says; opts.Progress, when set, gets the bytes
// checked, and opts.Limiter the bytes read. A volume that differs is a
// *pipeline.MismatchError naming the offset.
func VerifyVolume(ctx context.Context, up *Uploader, cp *pipeline.Checkpoint, vol Volume, opts pipeline.VerifyOptions) (pipeline.VerifyStats, error) {
	dir, err := os.MkdirTemp(up.tempDir, "ferry-verify-")
	if err != nil {
		return pipeline.VerifyStats{}, fmt.Errorf("verify %s: %w", vol.Path, err)
	}
	defer os.RemoveAll(dir)
	srv, err := up.serve(ctx, vol, filepath.Join(dir, "nbd.sock"), true)
	if err != nil {
		return pipeline.VerifyStats{}, fmt.Errorf("verify %s: %w", vol.Path, err)
	}
	defer srv.Stop()
	c, err := srv.Dial(ctx, up.log)
	if err != nil {
		return pipeline.VerifyStats{}, fmt.Errorf("verify %s: %w", vol.Path, err)
	}
	defer c.Close()
	if opts.InFlight == 0 {
		opts.InFlight = verifyInFlight
	}
	st, err := pipeline.VerifyWith(ctx, pipeline.NBDSource{Client: c}, cp, opts)
	if err != nil {
		return st, fmt.Errorf("volume %s: %w", vol.Path, err)
	}
	return st, nil
}
