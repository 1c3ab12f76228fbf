package kvm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"
	"libvirt.org/go/libvirt"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
	"github.com/ferry-v2v/ferry/agent/internal/pipeline"
	"github.com/ferry-v2v/ferry/agent/internal/runner"
	"github.com/ferry-v2v/ferry/pkg/kvmver"
	"github.com/ferry-v2v/ferry/pkg/nbd"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// Warm rounds of a KVM source: every round is a pull-mode backup that
// creates a libvirt checkpoint (a persistent dirty bitmap on each disk);
// the rounds after the first are incremental against the previous
// round's checkpoint, and only the extents its dirty bitmap marks
// (block status of the qemu:dirty-bitmap:<bitmap> context over the same
// NBD-over-SSH path) are read. The round's token is the checkpoint's
// name, CheckpointPrefix + job id + "-" + random; a round first deletes
// every checkpoint of its job but the previous one, so one interrupted
// halfway leaves nothing the next attempt trips over.

// CheckpointPrefix begins the name of every checkpoint Ferry makes.
const CheckpointPrefix = "ferry-"

var _ runner.Warmer = (*Driver)(nil)

// checkpointPrefix is the prefix of a job's checkpoints.
func checkpointPrefix(job *runner.Job) string {
	return CheckpointPrefix + path.Base(job.Name()) + "-"
}

// Round copies what changed since the checkpoint prev (everything when
// prev is "") into the cache and returns the new checkpoint as token. The
// cutover's round (after StopSource) goes on with what StopSource
// prepared, makes no checkpoint (its token is prev) and sends its delta
// to the job's CutoverSink when there is one; of a shut-off VM it reads
// the images themselves (shutOffRound).
func (d *Driver) Round(ctx context.Context, job *runner.Job, prev string) (runner.RoundResult, error) {
	a := job.Assignment
	var src *source
	var p roundPlan
	d.mu.Lock()
	cp := d.cutover[job.Name()]
	delete(d.cutover, job.Name())
	d.mu.Unlock()
	if cp != nil {
		src, p = cp.src, cp.plan
	} else {
		src = &source{d: d, job: job}
		if err := src.connectFirst(ctx); err != nil {
			return runner.RoundResult{}, err
		}
	}
	ownConn := true // false once EndWarm's end of the backup owns it
	defer func() {
		if ownConn {
			src.conn.Close()
		}
	}()
	var err error
	if cp != nil {
		err = d.checkCutover(ctx, src, &p, prev)
	} else {
		p, err = d.prepareRound(ctx, src, prev)
	}
	if err != nil {
		return runner.RoundResult{}, err
	}
	if p.stopped == stopShutOff {
		return d.shutOffRound(ctx, src, p, prev)
	}
	record := ""
	b, err := src.conn.StartBackup(ctx, a.GetJob().GetSourceVm(), p.targets, BackupOptions{Checkpoint: p.next, Incremental: prev,
		BeforeBegin: func(b *Backup) error {
			cfg, err := d.config(a.GetSource(), a.GetMigrationServer(), a.GetSecrets(), job.Log)
			if err == nil {
				record, err = d.remember(cfg, a.GetMigrationServer().GetMigrationCidr(), job.Name(), b)
			}
			return err
		}})
	if err != nil {
		d.release(record, true)
		return runner.RoundResult{}, err
	}
	end := func() {
		cerr := b.Close(context.WithoutCancel(ctx))
		if cerr != nil {
			job.Log.Error("end the source backup; the agent tries again later", "err", cerr)
		}
		d.release(record, cerr == nil)
	}
	defer func() {
		if p.stopped != stopPaused {
			end()
			return
		}
		// The cutover's backup ends in EndWarm, once the target VM
		// started: the source VM is paused, and nothing else competes
		// with the cutover meanwhile.
		ownConn = false
		conn := src.conn
		d.mu.Lock()
		d.ending[job.Name()] = func() {
			defer conn.Close()
			end()
		}
		d.mu.Unlock()
	}()
	disks, err := d.copyRound(ctx, src, b, p.vm, prev)
	if err != nil {
		return runner.RoundResult{}, err
	}
	token := p.next
	if token == "" {
		token = prev // the cutover's round makes no checkpoint
	}
	return runner.RoundResult{Token: token, Disks: disks}, nil
}

// roundPlan is what prepareRound found and chose.
type roundPlan struct {
	vm      *VM
	targets []string
	stopped stopKind // StopSource stopped the VM: the cutover's round
	next    string   // the checkpoint this round makes
}

// prepareRound checks the VM can still be copied warm, ends a backup an
// earlier attempt left, deletes the job's checkpoints but prev (all but
// checks prev in the cutover's round, where deleting would lengthen the
// downtime), records the job's warm record and names the next checkpoint.
// A first round empties the cache: what an interrupted one left holds
// another point in time.
func (d *Driver) prepareRound(ctx context.Context, src *source, prev string) (roundPlan, error) {
	job := src.job
	vmName := job.Assignment.GetJob().GetSourceVm()
	p, err := d.checkRound(ctx, src)
	if err != nil {
		return roundPlan{}, err
	}
	prefix := checkpointPrefix(job)
	if p.stopped != notStopped && prev != "" {
		err = src.conn.CheckCheckpoint(ctx, vmName, prev)
	} else {
		err = src.conn.DeleteCheckpoints(ctx, vmName, prefix, prev)
	}
	if err != nil {
		return roundPlan{}, err
	}
	if p.next, err = checkpointName(prefix); err != nil {
		return roundPlan{}, err
	}
	if prev == "" {
		for _, t := range p.targets {
			if err := cache.Reset(job.CacheDir, t); err != nil {
				return roundPlan{}, err
			}
		}
	}
	return p, nil
}

// checkRound checks the VM can still be copied warm, ends a backup an
// earlier attempt left and records the job's warm record.
func (d *Driver) checkRound(ctx context.Context, src *source) (roundPlan, error) {
	job := src.job
	a := job.Assignment
	vmName := a.GetJob().GetSourceVm()
	vm, err := src.conn.DescribeVM(ctx, vmName)
	if err != nil {
		return roundPlan{}, err
	}
	if err := src.conn.CheckVersions(cephReason(a, vm)); err != nil {
		return roundPlan{}, err
	}
	p := roundPlan{vm: vm}
	for _, disk := range a.GetJob().GetTarget().GetDisks() {
		p.targets = append(p.targets, disk.GetSourceDisk())
	}
	refusal := kvmver.WarmRefusal
	if k, _ := markedStop(job); k == stopShutOff {
		// The cutover shut it off (an agent killed in it): its last round
		// reads the shut-off images.
		refusal = kvmver.BitmapRefusal
	}
	if why := refusal(vm.Proto(), func(t string) bool { return slices.Contains(p.targets, t) }); why != "" {
		return roundPlan{}, fmt.Errorf("VM %s: %s", vmName, why)
	}
	if err := src.conn.CleanupStale(ctx, vmName); err != nil {
		return roundPlan{}, fmt.Errorf("clean up an earlier backup of %s: %w", vmName, err)
	}
	d.mu.Lock()
	p.stopped = d.stopped[job.Name()]
	d.mu.Unlock()
	if err := d.rememberWarm(job, vmName, vm.UUID); err != nil {
		return roundPlan{}, err
	}
	return p, nil
}

// copyRound copies every disk of the backup b: whole (with the source
// VM's description) in a first round, only the dirty extents after.
func (d *Driver) copyRound(ctx context.Context, src *source, b *Backup, vm *VM, prev string) ([]runner.DiskDelta, error) {
	job := src.job
	if prev == "" {
		if err := d.saveSourceVM(ctx, src.conn, vm, job.CacheDir); err != nil {
			return nil, err
		}
	}
	var out []runner.DiskDelta
	for _, disk := range job.Assignment.GetJob().GetTarget().GetDisks() {
		var dd runner.DiskDelta
		var err error
		if prev == "" {
			src.stats = pipeline.Stats{}
			err = src.copyDisk(ctx, b, disk)
			dd = runner.DiskDelta{Disk: disk.GetSourceDisk(), ChangedBytes: src.stats.DataBytes + src.stats.SkippedBytes,
				ReadBytes: src.stats.DataBytes}
		} else {
			dd, err = d.copyDelta(ctx, job, b, disk)
		}
		if err != nil {
			return nil, fmt.Errorf("disk %s: %w", disk.GetSourceDisk(), err)
		}
		out = append(out, dd)
	}
	return out, nil
}

func checkpointName(prefix string) (string, error) {
	id := make([]byte, 4)
	if _, err := rand.Read(id); err != nil {
		return "", err
	}
	return prefix + hex.EncodeToString(id), nil
}

// deltaPiece is the most a delta round reads at once; deltaInFlight how
// many pieces are read at once.
const (
	deltaPiece    = 1 << 20
	deltaInFlight = 8
)

// bitmapExport is an NBD export of each disk offering a dirty bitmap: an
// incremental backup's, or qemu-nbd's of a shut-off VM's images.
type bitmapExport interface {
	ExportBitmap(target string) string
	OpenDisk(ctx context.Context, target string) (net.Conn, error)
}

// copyDelta reads the extents the export's dirty bitmap marks and
// rewrites them in the cache image, rounded out to cache.Granule.
func (d *Driver) copyDelta(ctx context.Context, job *runner.Job, b bitmapExport, disk *ferryv1.TargetDisk) (runner.DiskDelta, error) {
	name := disk.GetSourceDisk()
	dd := runner.DiskDelta{Disk: name, Extents: []pipeline.Extent{}}
	bitmap := b.ExportBitmap(name)
	if bitmap == "" {
		return dd, fmt.Errorf("the source export offers no dirty bitmap for %s", name)
	}
	nc, err := b.OpenDisk(ctx, name)
	if err != nil {
		return dd, err
	}
	c, err := nbd.NewClient(ctx, nc, nbd.Options{ExportName: name, MetaContext: "qemu:dirty-bitmap:" + bitmap, Logger: job.Log})
	if err != nil {
		nc.Close()
		return dd, fmt.Errorf("open the source export: %w", err)
	}
	defer c.Close()
	if !c.CanBlockStatus() {
		return dd, fmt.Errorf("the source export of %s does not offer qemu:dirty-bitmap:%s", name, bitmap)
	}
	size := c.Size()
	exts, err := c.Extents(ctx, 0, size)
	if err != nil {
		return dd, fmt.Errorf("dirty bitmap %s: %w", bitmap, err)
	}
	var runs [][2]int64
	for _, e := range exts {
		if !e.Dirty() {
			continue
		}
		dd.ChangedBytes += e.Length
		off := e.Offset / cache.Granule * cache.Granule
		end := min((e.End()+cache.Granule-1)/cache.Granule*cache.Granule, size)
		if n := len(runs); n > 0 && runs[n-1][1] >= off {
			runs[n-1][1] = max(runs[n-1][1], end)
			continue
		}
		runs = append(runs, [2]int64{off, end})
	}
	if sink := job.CutoverSink(); sink != nil {
		return forwardDelta(ctx, job, c, sink, dd, runs)
	}
	if len(runs) == 0 {
		return dd, nil
	}
	compressed := job.Assignment.GetJob().GetOptions().GetCompression() != ferryv1.Compression_COMPRESSION_NONE
	img, err := cache.Open(ctx, job.CacheDir, name, size, compressed, job.Log)
	if err != nil {
		return dd, err
	}
	defer img.Close()
	err = eachPiece(ctx, runs, &dd, func(ctx context.Context, off, n int64) (pipeline.Extent, error) {
		zero, err := copyPiece(ctx, job, c, img, off, n, compressed)
		return pipeline.Extent{Offset: off, Length: n, Zero: zero}, err
	})
	if err != nil {
		return dd, err
	}
	if err := img.Flush(ctx); err != nil {
		return dd, fmt.Errorf("flush the cache image of %s: %w", name, err)
	}
	job.Log.Info("delta copied to the cache", "disk", name, "changed_bytes", dd.ChangedBytes, "read_bytes", dd.ReadBytes,
		"extents", len(runs))
	return dd, img.Close()
}

// eachPiece calls piece for every piece of runs (at most deltaPiece
// bytes), deltaInFlight at once, and adds what each read to dd: its
// bytes, and its extent, dd.Extents sorted by offset at the end.
func eachPiece(ctx context.Context, runs [][2]int64, dd *runner.DiskDelta, piece func(ctx context.Context, off, n int64) (pipeline.Extent, error)) error {
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(deltaInFlight)
	for _, r := range runs {
		for off := r[0]; off < r[1]; off += deltaPiece {
			n := min(int64(deltaPiece), r[1]-off)
			g.Go(func() error {
				e, err := piece(gctx, off, n)
				if err != nil {
					return err
				}
				mu.Lock()
				dd.ReadBytes += n
				dd.Extents = append(dd.Extents, e)
				mu.Unlock()
				return nil
			})
		}
	}
	err := g.Wait()
	slices.SortFunc(dd.Extents, func(a, b pipeline.Extent) int { return int(a.Offset - b.Offset) })
	return err
}

// copyPiece reads n bytes at off from the source and writes them into the
// cache image: as zeroes when they are all zero, else zeroed first when
// the image is compressed (its clusters cannot be overwritten in place).
func copyPiece(ctx context.Context, job *runner.Job, src *nbd.Client, img *cache.Image, off, n int64, compressed bool) (bool, error) {
	if err := job.Downstream.WaitN(ctx, int(n)); err != nil {
		return false, err
	}
	buf := make([]byte, n)
	if err := src.ReadAt(ctx, buf, off); err != nil {
		return false, fmt.Errorf("read %d bytes at %d: %w", n, off, err)
	}
	zero := !slices.ContainsFunc(buf, func(b byte) bool { return b != 0 })
	if zero || compressed {
		if err := img.WriteZeroes(ctx, off, n); err != nil {
			return false, fmt.Errorf("zero the cache at %d: %w", off, err)
		}
	}
	if !zero {
		if err := img.WriteAt(ctx, buf, off); err != nil {
			return false, fmt.Errorf("write the cache at %d: %w", off, err)
		}
	}
	return zero, nil
}

// EndWarm deletes the job's checkpoints and settles the source VM: after
// a failed cutover it runs again (started again after a shutdown, resumed
// from a pause); after a successful one it stays as the cutover stopped
// it, shut off, or paused with options.pause_source_vm.
func (d *Driver) EndWarm(ctx context.Context, job *runner.Job, succeeded bool) error {
	d.mu.Lock()
	stopped := d.stopped[job.Name()]
	delete(d.stopped, job.Name())
	ending := d.ending[job.Name()]
	delete(d.ending, job.Name())
	cp := d.cutover[job.Name()]
	delete(d.cutover, job.Name())
	d.mu.Unlock()
	if cp != nil {
		cp.src.conn.Close()
	}
	deleted := false
	defer func() { d.forgetWarm(job, deleted) }()
	if ending != nil {
		ending()
	}
	// An agent killed in the cutover may have stopped the VM: the job's
	// cache says so. That agent's shutdown request, if any, went with it.
	marked := false
	if stopped == notStopped {
		stopped, _ = markedStop(job)
		marked = stopped != notStopped
	}
	return d.withDomain(ctx, job, func(conn *Conn, dom *libvirt.Domain) error {
		var errs []error
		state, _, err := dom.GetState()
		if err != nil {
			return fmt.Errorf("state of the source VM: %w", err)
		}
		settled := true // the VM is as it should stay: the record of the stop can go
		if stopped == stopShutOff && !succeeded && (!marked || state == libvirt.DOMAIN_SHUTOFF) {
			// Started first: a running VM's checkpoints are deleted
			// with their bitmaps by libvirt itself.
			if err := startAgain(context.WithoutCancel(ctx), job, dom); err != nil {
				errs, settled = append(errs, err), false
			}
		}
		name, _ := dom.GetName()
		err = deleteCheckpoints(ctx, conn, dom, name, checkpointPrefix(job), "", job.Log)
		deleted = err == nil
		if err != nil {
			errs = append(errs, err)
		}
		if stopped == stopPaused && !succeeded && state == libvirt.DOMAIN_PAUSED {
			if err := dom.Resume(); err != nil {
				errs, settled = append(errs, fmt.Errorf("resume the source VM after a failed cutover: %w", err)), false
			} else {
				job.Log.Info("source VM resumed: the cutover did not finish")
			}
		}
		if settled {
			if err := job.UnmarkSourceStopped(); err != nil {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	})
}

// withDomain connects to the job's source and calls f with the
// connection and its VM.
func (d *Driver) withDomain(ctx context.Context, job *runner.Job, f func(conn *Conn, dom *libvirt.Domain) error) error {
	src := &source{d: d, job: job}
	if err := src.connectFirst(ctx); err != nil {
		return err
	}
	defer func() { src.conn.Close() }()
	dom, err := src.conn.domain(job.Assignment.GetJob().GetSourceVm())
	if err != nil {
		return err
	}
	defer dom.Free()
	return f(src.conn, dom)
}

// CheckCheckpoint fails unless the VM has the checkpoint name.
func (c *Conn) CheckCheckpoint(ctx context.Context, vmName, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	dom, err := c.domain(vmName)
	if err != nil {
		return err
	}
	defer dom.Free()
	cp, err := dom.CheckpointLookupByName(name, 0)
	if err != nil {
		return fmt.Errorf("checkpoint %s of VM %s is gone: the rounds cannot go on from it (restart the job for a new full copy): %w", name, vmName, err)
	}
	return cp.Free()
}

// DeleteCheckpoints deletes the VM's checkpoints whose names begin with
// prefix, except keep; a keep that is not there is an error (the rounds
// cannot go on from it).
func (c *Conn) DeleteCheckpoints(ctx context.Context, vmName, prefix, keep string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	dom, err := c.domain(vmName)
	if err != nil {
		return err
	}
	defer dom.Free()
	return deleteCheckpoints(ctx, c, dom, vmName, prefix, keep, c.log)
}

// deleteCheckpoints deletes the checkpoints of dom whose names begin with
// prefix, except keep. Those of a shut-off VM, which libvirt (9.0) cannot
// delete, lose their bitmaps through c (removeBitmapsOffline) and then
// their metadata.
func deleteCheckpoints(ctx context.Context, c *Conn, dom *libvirt.Domain, vmName, prefix, keep string, log *slog.Logger) error {
	cps, err := dom.ListAllCheckpoints(0)
	if err != nil {
		return fmt.Errorf("checkpoints of VM %s: %w", vmName, err)
	}
	active, err := dom.IsActive()
	if err != nil {
		return fmt.Errorf("state of VM %s: %w", vmName, err)
	}
	found := false
	var errs []error
	for i := range cps {
		cp := &cps[i]
		name, err := cp.GetName()
		if err == nil && name == keep {
			found = true
		}
		if err == nil && name != keep && strings.HasPrefix(name, prefix) {
			var flags libvirt.DomainCheckpointDeleteFlags
			if !active {
				err = c.removeBitmapsOffline(ctx, dom, cp, name, log)
				flags = libvirt.DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("delete checkpoint %s of shut-off VM %s: %w", name, vmName, err))
			} else if err := cp.Delete(flags); err != nil {
				errs = append(errs, fmt.Errorf("delete checkpoint %s of VM %s: %w", name, vmName, err))
			} else {
				log.Info("checkpoint deleted", "vm", vmName, "checkpoint", name)
			}
		}
		cp.Free()
	}
	if keep != "" && !found {
		errs = append(errs, fmt.Errorf("checkpoint %s of VM %s is gone: the rounds cannot go on from it (restart the job for a new full copy)", keep, vmName))
	}
	return errors.Join(errs...)
}
