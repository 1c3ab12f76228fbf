package target

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
	"github.com/ferry-v2v/ferry/agent/internal/pipeline"
	"github.com/ferry-v2v/ferry/agent/internal/runner"
	"github.com/ferry-v2v/ferry/pkg/nbd"
)

// The upload beside the copy. Each disk's upload follows the copy's
// checkpoint: a chunk the checkpoint marks done is durably in the cache
// and final, so it is read (through the copy's own qemu-nbd while the copy
// runs, through a read-only one after it) and written to the target
// volume, under the upstream limit. Chunks durably on the volume are
// marked in the upload checkpoint, so an agent killed mid-job resumes the
// upload where it was, as the copy resumes from the cache: the cache stays
// the restart point, and the volume only ever holds what it holds.

var _ runner.Overlapper = (*Driver)(nil)

// roundBytes bounds the chunks one upload round takes.
const roundBytes = 256 << 20

// followPoll is how often an upload looks for chunks the copy finished.
// The copy saves its checkpoint about once a second.
var followPoll = 200 * time.Millisecond

// errCacheRead marks a failed read of the cache image, such as when the
// copy closed it: an upload beside the copy tries again later.
var errCacheRead = errors.New("read the cache image")

// UploadBeside uploads every disk of the job while CONVERTING copies them
// into the cache, and returns once converted is closed (CONVERTING ended)
// and every disk is on its volume: a volume of this host, or of the host
// the VM is placed on (uploadRemote), the same way.
func (d *Driver) UploadBeside(ctx context.Context, job *runner.Job, converted <-chan struct{}) error {
	if th := d.uploadHostOf(job); th != "" {
		return d.uploadRemote(ctx, job, th, converted)
	}
	vols, err := volumes(job)
	if err != nil {
		return err
	}
	up := NewUploader(UploadDeps{Commander: d.opts.Commander, Copier: &NBDCopier{Limiter: job.Upstream, Log: job.Log}, Log: job.Log,
		Fence: job.Fence})
	var fs []*follower
	for i, disk := range job.Assignment.GetJob().GetTarget().GetDisks() {
		fs = append(fs, newFollower(job, up, disk.GetSourceDisk(), vols[i], converted))
	}
	return followAll(ctx, fs)
}

// followAll runs the followers side by side until each is done or one
// fails.
func followAll(ctx context.Context, fs []*follower) error {
	g, gctx := errgroup.WithContext(ctx)
	for _, f := range fs {
		g.Go(func() error {
			if err := f.run(gctx); err != nil {
				return fmt.Errorf("disk %s: %w", f.disk, err)
			}
			return nil
		})
	}
	return g.Wait()
}

// follower uploads one disk.
type follower struct {
	up        *Uploader
	job       *runner.Job
	disk      string
	vol       Volume
	converted <-chan struct{}
	log       *slog.Logger

	// ckpt is the upload checkpoint's path; volID names the volume in it.
	ckpt, volID string
	// remote, for a volume another host's agent created and serves, is its
	// export; created says that agent created it for this run.
	remote  *Endpoint
	created bool

	gen      string        // the cache image's generation the marks are of
	marks    *uploadMarks  // nil until the volume is adopted
	zeroed   bool          // the volume read as zeroes where nothing was written
	export   *cache.Export // the read-only cache export, once the copy ended
	target   *cache.Server
	dst      *nbd.Client   // the volume's qemu-nbd, or
	direct   *directVolume // the volume's file itself (direct.go)
	directOK bool          // the volume could be opened so once
	tmpDir   string
	feed     *pipeline.Feed // the chunks the copy offers from its buffers
	writing  bool           // the fence before the first write to the volume passed
	uploaded int64          // data bytes this run has durably on the volume
	rounds   int
	saved    int // chunks this run marked durably on the volume

	// The verification beside the upload (verifyBeside): chunks on the
	// volume not yet read back by this run, chunks read back and matched,
	// and whether it gave up (a chunk without a checksum).
	unverified     []int
	unverifiedData int64 // data bytes the rounds wrote to the unverified chunks
	verified       int
	verifiedBytes  int64 // the bytes of those chunks
	noVerify       bool
}

// newFollower follows disk onto vol, a volume of this host.
func newFollower(job *runner.Job, up *Uploader, disk string, vol Volume, converted <-chan struct{}) *follower {
	return &follower{up: up, job: job, disk: disk, vol: vol, converted: converted, log: job.Log.With("disk", disk),
		ckpt: cache.UploadCheckpointPath(job.CacheDir, disk), volID: vol.Path}
}

// onto makes f write the volume targetHost's agent serves at dst (its
// vol.Path there), created anew or kept, with an upload checkpoint of its
// own.
func (f *follower) onto(targetHost string, dst Endpoint, created bool) {
	f.remote, f.created = &dst, created
	f.ckpt = uploadCheckpointPath(f.job.CacheDir, f.disk, targetHost)
	f.volID = path.Base(targetHost) + ":" + f.vol.Path
	f.log = f.log.With("target_host", targetHost)
}

func (f *follower) run(ctx context.Context) error {
	f.feed = pipeline.Subscribe(cache.CheckpointPath(f.job.CacheDir, f.disk), feedBytes)
	defer f.close()
	start := time.Now()
	for {
		converted := isClosed(f.converted)
		saved := f.feed.Saved() // before the step looks at the checkpoint
		finished, progressed, err := f.step(ctx, converted)
		if err != nil {
			return err
		}
		if finished {
			f.log.InfoContext(ctx, "uploaded", "volume", f.vol.Path, "bytes", f.uploaded, "rounds", f.rounds,
				"seconds", time.Since(start).Seconds())
			return nil
		}
		if progressed {
			continue
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(followPoll):
		case <-saved:
		case <-whenOpen(f.converted, converted):
		}
	}
}

// whenOpen returns ch while it was still open, so a wait ends when it
// closes; nil (never ready) once it is known closed.
func whenOpen(ch <-chan struct{}, closed bool) <-chan struct{} {
	if closed {
		return nil
	}
	return ch
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// step uploads the chunks the copy finished since the last step. It
// reports whether the disk is wholly uploaded, and whether it moved on
// (when not, the caller waits before the next step).
func (f *follower) step(ctx context.Context, converted bool) (finished, progressed bool, err error) {
	dir := f.job.CacheDir
	if converted && cache.Prepared(dir, f.disk) {
		// PREPARING converted the guest: its overlay goes whole (the
		// copy's checkpoint says nothing of what the conversion wrote).
		if f.remote != nil {
			return true, false, f.uploadWholeRemote(ctx)
		}
		return true, false, uploadWhole(ctx, f.job, f.up, f.disk, f.vol)
	}
	gen, err := cache.Generation(dir, f.disk)
	if err == nil {
		var m pipeline.Marks
		if m, err = pipeline.ReadMarks(cache.CheckpointPath(dir, f.disk)); err == nil {
			return f.follow(ctx, converted, gen, m)
		}
	}
	if !converted {
		// The copy has not made the image or its first checkpoint yet, or
		// is replacing them.
		return false, false, nil
	}
	if errors.Is(err, fs.ErrNotExist) && f.marks == nil {
		// An image without a checkpoint (or generation): the copy is over,
		// so the whole image goes in one go.
		if f.remote != nil {
			return true, false, f.uploadWholeRemote(ctx)
		}
		return true, false, uploadWhole(ctx, f.job, f.up, f.disk, f.vol)
	}
	return false, false, err
}

func (f *follower) follow(ctx context.Context, converted bool, gen string, m pipeline.Marks) (finished, progressed bool, err error) {
	if f.marks == nil || gen != f.gen || f.marks.size != m.Size || f.marks.chunk != m.ChunkSize {
		if err := f.adopt(ctx, gen, m); err != nil {
			return false, false, err
		}
	}
	// A round takes at most roundBytes of chunks, and about a second's
	// worth under an upstream limit: the copy waits for the round in
	// progress before it closes the image.
	limit := int64(roundBytes)
	if l := f.job.Upstream; l != nil && l.Rate() > 0 {
		limit = min(limit, max(m.ChunkSize, l.Rate()/8))
	}
	// Chunks of zeroes the copy offered cost the round nothing: a 64 GiB
	// disk holding 1 GiB is not 32k chunks of rounds.
	var todo []int
	var budget int64
	for i := range m.Chunks() {
		if m.Done(i) && !f.marks.isDone(i) && budget < limit {
			todo = append(todo, i)
			if f.feed == nil || !f.feed.HoldsZero(i) {
				budget += m.ChunkSize
			}
		}
	}
	if len(todo) == 0 {
		switch {
		case converted && m.Complete():
			return true, false, f.finish(ctx)
		case converted:
			return false, false, fmt.Errorf("the copy ended with %d of %d chunks in the cache", countDone(m), m.Chunks())
		case f.unverifiedData > 0 && !f.noVerify:
			// Nothing new in the cache yet: read back what is on the
			// volume meanwhile. An upload that lags the copy reads back at
			// the end instead (finish), so the read-back never holds the
			// upload up.
			n := f.verified
			err := f.verifyBeside(ctx)
			return false, f.verified > n, err
		}
		return false, false, nil
	}
	// Every round is a target write: once the first one passed, each
	// further round waits for the leader to confirm the assignment too, so
	// an agent cut off from the leader stops writing within a round
	// (docs/faults.md, Fencing).
	if f.writing {
		if err := f.up.fence(ctx, "upload round onto volume "+f.vol.Path); err != nil {
			return false, false, err
		}
	}
	before := f.uploaded
	done, rest, err := f.roundFed(ctx, todo)
	if err != nil {
		return false, false, err
	}
	if len(rest) > 0 {
		ok, err := f.roundCache(ctx, converted, m, rest)
		if err != nil {
			return false, false, err
		}
		if ok {
			done = append(done, rest...)
		}
	}
	if len(done) == 0 {
		return false, false, nil
	}
	// What was read describes the image of gen; a copy that replaced the
	// image meanwhile (a VMware stream started over) makes it void.
	if now, err := cache.Generation(f.job.CacheDir, f.disk); err != nil || now != gen {
		return false, false, nil
	}
	f.marks.mark(done)
	if err := f.marks.save(); err != nil {
		return false, false, err
	}
	f.saved += len(done)
	f.unverified = append(f.unverified, done...)
	f.unverifiedData += f.uploaded - before
	return false, true, nil
}

// roundCache uploads the chunks todo reading them from the cache image:
// by qemu-img or through the agent. It reports false, and no error, when
// the image could not be read while the copy runs (a later round tries
// again).
func (f *follower) roundCache(ctx context.Context, converted bool, m pipeline.Marks, todo []int) (bool, error) {
	src, socket, release, err := f.source(ctx, converted)
	if errors.Is(err, cache.ErrNotWriting) && !converted {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if useDirect && !f.directOK && f.remote == nil && f.vol.Dir != "" {
		// Whether the volume can be written directly decides the round.
		if err := f.openTarget(ctx); err != nil {
			release()
			return false, err
		}
	}
	if f.byQemuImg() {
		err = f.roundQemuImg(ctx, socket, src, m, todo)
	} else {
		err = f.round(ctx, src, m, todo)
	}
	release()
	if err != nil {
		if !converted && errors.Is(err, errCacheRead) && ctx.Err() == nil {
			f.log.DebugContext(ctx, "cache read broke off; trying again", "err", err)
			return false, nil
		}
		return false, err
	}
	return true, nil
}

func countDone(m pipeline.Marks) int {
	n := 0
	for i := range m.Chunks() {
		if m.Done(i) {
			n++
		}
	}
	return n
}

// adopt takes the volume for the cache image of gen: the volume and upload
// checkpoint an earlier run left for this very image are resumed; anything
// else starts over on a volume created anew.
func (f *follower) adopt(ctx context.Context, gen string, m pipeline.Marks) error {
	f.closeTarget()
	f.vol.Size = max(f.vol.Size, m.Size)
	marks, ok, err := loadUploadMarks(f.ckpt, gen, f.volID, m.Size, m.ChunkSize)
	if err != nil {
		return err
	}
	f.unverified, f.unverifiedData, f.verified, f.verifiedBytes, f.noVerify = nil, 0, 0, 0, false
	resumed := ok && f.volumeExists(ctx)
	if resumed {
		f.log.InfoContext(ctx, "resuming the upload", "volume", f.vol.Path, "chunks_uploaded", marks.count(), "chunks", marks.chunks())
		// What an earlier run uploaded is read back again by this one.
		for i := range marks.chunks() {
			if marks.isDone(i) {
				f.unverified = append(f.unverified, i)
			}
		}
	} else {
		// Another host's volume is created by its agent, which fences that
		// write itself; a kept one is written over, zeroes too.
		if f.remote == nil {
			if err := f.up.fence(ctx, "create volume "+f.vol.Path); err != nil {
				return err
			}
			if err := f.vol.Create(ctx, f.up.cmds); err != nil {
				return err
			}
		}
		marks = newUploadMarks(f.ckpt, gen, f.volID, m.Size, m.ChunkSize)
		if err := marks.save(); err != nil {
			return err
		}
		if f.uploaded > 0 {
			// A new image, a new volume: what went to the old one counts
			// no more.
			f.uploaded = 0
			f.job.Progress.Uploaded(f.disk, 0)
		}
	}
	zeroed := f.vol.ZeroInitialized()
	if f.remote != nil {
		// A volume another host kept holds what earlier runs wrote: it
		// reads as zeroes where this image has none only when this image
		// alone wrote it (resumed) or it is new; from now on this run
		// writes it.
		zeroed = zeroed && (resumed || f.created)
		f.created = false
	}
	f.gen, f.marks, f.zeroed, f.writing = gen, marks, zeroed, false
	return nil
}

// volumeExists reports whether the volume is there to be resumed.
func (f *follower) volumeExists(ctx context.Context) bool {
	if f.remote != nil {
		return !f.created
	}
	if f.vol.Dir != "" {
		_, err := os.Stat(f.vol.Path)
		return err == nil
	}
	_, err := f.up.cmds.Run(ctx, "qemu-img", "info", "-f", f.vol.Format, f.vol.Path)
	return err == nil
}

// source connects to the cache image: the copy's own qemu-nbd while the
// copy runs, a read-only export of the image once it has ended. It
// returns a connection and the server's socket, both good until release.
func (f *follower) source(ctx context.Context, converted bool) (*nbd.Client, string, func(), error) {
	if !converted {
		socket, hold, err := cache.HoldWriting(f.job.CacheDir, f.disk)
		if err != nil {
			return nil, "", nil, err
		}
		c, release, err := cache.DialWriting(ctx, f.job.CacheDir, f.disk, f.log)
		if err != nil {
			hold()
			return nil, "", nil, err
		}
		return c, socket, func() { release(); hold() }, nil
	}
	if f.export == nil {
		e, err := cache.OpenExport(ctx, f.job.CacheDir, f.disk, f.log)
		if err != nil {
			return nil, "", nil, err
		}
		f.export = e
	}
	return f.export.Client(), f.export.Socket(), func() {}, nil
}

// openTarget serves the volume writable for the rest of the upload.
func (f *follower) openTarget(ctx context.Context) error {
	if f.dst != nil || f.direct != nil {
		return nil
	}
	// Serving the volume writable is the upload's first write to it.
	if !f.writing {
		if err := f.up.fence(ctx, "upload onto volume "+f.vol.Path); err != nil {
			return err
		}
		f.writing = true
	}
	if f.remote != nil {
		c, err := f.remote.dial(ctx, nbd.Options{MaxInFlight: 64, Logger: f.log})
		if err != nil {
			return fmt.Errorf("upload onto %s: %w", f.remote.URI(), err)
		}
		f.dst = c
		return nil
	}
	if useDirect && f.vol.Dir != "" && f.vol.Format == FormatQcow2 {
		v, err := openDirect(ctx, f.vol.Path)
		if err == nil {
			f.direct, f.directOK = v, true
			f.askWait()
			f.log.DebugContext(ctx, "writing the volume's file directly", "volume", f.vol.Path, "runs", len(v.runs))
			return nil
		}
		f.log.DebugContext(ctx, "writing the volume through qemu-nbd", "volume", f.vol.Path, "reason", err)
	}
	d, err := os.MkdirTemp(f.up.tempDir, "ferry-upload-")
	if err != nil {
		return fmt.Errorf("upload %s: %w", f.vol.Path, err)
	}
	srv, err := f.up.serve(ctx, f.vol, filepath.Join(d, "nbd.sock"), false)
	if err == nil {
		f.dst, err = srv.Dial(ctx, f.log)
		if err != nil {
			_ = srv.Stop()
		}
	}
	if err != nil {
		os.RemoveAll(d)
		return fmt.Errorf("upload %s: %w", f.vol.Path, err)
	}
	f.target, f.tmpDir = srv, d
	return nil
}

// sink is the volume opened by openTarget, to write.
func (f *follower) sink() pipeline.Sink {
	if f.direct != nil {
		return f.direct
	}
	return pipeline.NBDSink{Client: f.dst}
}

// readBack is the volume opened by openTarget, to read back.
func (f *follower) readBack() pipeline.Source {
	if f.direct != nil {
		return f.direct
	}
	return pipeline.NBDSource{Client: f.dst}
}

func (f *follower) closeTarget() error {
	var err error
	if f.direct != nil {
		err = f.direct.Close()
		f.direct = nil
	}
	if f.dst != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_ = f.dst.Disconnect(ctx)
		cancel()
		f.dst = nil
	}
	if f.target != nil {
		if serr := f.target.Stop(); err == nil {
			err = serr
		}
		f.target = nil
	}
	if f.tmpDir != "" {
		os.RemoveAll(f.tmpDir)
		f.tmpDir = ""
	}
	return err
}

func (f *follower) close() {
	if f.feed != nil {
		f.feed.Close()
	}
	_ = f.closeTarget()
	if f.export != nil {
		_ = f.export.Close()
		f.export = nil
	}
}

// finish zeroes the volume past the disk when it does not read as zeroes,
// and stops its qemu-nbd, which flushes it.
func (f *follower) finish(ctx context.Context) error {
	if err := f.openTarget(ctx); err != nil {
		return err
	}
	dst := f.sink()
	if tail := f.readBack().Size() - f.marks.size; tail > 0 && !f.zeroed {
		if err := dst.WriteZeroes(ctx, f.marks.size, tail); err != nil {
			return fmt.Errorf("zero the volume's tail: %w", err)
		}
		if err := dst.Flush(ctx); err != nil {
			return fmt.Errorf("flush volume: %w", err)
		}
	}
	if err := f.verifyBeside(ctx); err != nil {
		return err
	}
	if !f.noVerify && f.verified == f.marks.chunks() {
		f.job.Progress.SetVerified(f.disk)
		f.log.InfoContext(ctx, "disk verified", "volume", f.vol.Path, "beside_upload", true)
	}
	return f.closeTarget()
}
