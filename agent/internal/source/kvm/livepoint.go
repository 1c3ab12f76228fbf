package kvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
	"github.com/ferry-v2v/ferry/agent/internal/pipeline"
	"github.com/ferry-v2v/ferry/agent/internal/runner"
	"github.com/ferry-v2v/ferry/pkg/durable"
	"github.com/ferry-v2v/ferry/pkg/nbd"
)

// A live copy's cache holds its disks at one point in time: the backup's
// or the snapshot's. A restarted job (or an agent that died and resumes
// it) begins a new backup, at a later point, while the VM kept running:
// keeping the chunks of the first and copying the rest from the second
// would mix two points in time, a disk no guest ever wrote.
//
// So the first backup of a VM whose copied disks are all qcow2 creates a
// libvirt checkpoint (a dirty bitmap, CheckpointPrefix + job id), named
// in the cache's live point record; a later attempt's backup is
// incremental against it, the chunks its dirty bitmap marks are forgotten
// in the cache's checkpoints (read again from the new point in time),
// and its own checkpoint takes over. Without a checkpoint to go on from
// (raw disks, the snapshot method, the checkpoint gone) a partial cache
// starts over. A complete cache is one point in time and is kept whole.
// The checkpoints go once the copy is complete; the warm record lets the
// janitor delete them after a crash once the cache is gone.

// A cold copy's cache holds the images of the shut-off VM as they were
// when it began: the record keeps their size and modification time, and
// a restart whose images differ (the VM ran in between) starts over.

// livePointFile is the record, in the job's cache directory.
const livePointFile = "point-in-time.json"

type livePoint struct {
	// Checkpoint is the checkpoint the cached chunks can be checked
	// against: what changed since it is stale in the cache.
	Checkpoint string `json:"checkpoint,omitempty"`
	// Complete: every disk is wholly in the cache, of one point in time.
	Complete bool `json:"complete,omitempty"`
	// Stamps are a cold copy's images' size and modification time
	// (ColdExport.stamps) when it began.
	Stamps string `json:"stamps,omitempty"`
}

func loadLivePoint(dir string) (livePoint, bool, error) {
	var p livePoint
	b, err := os.ReadFile(filepath.Join(dir, livePointFile))
	if errors.Is(err, fs.ErrNotExist) {
		return p, false, nil
	}
	if err != nil {
		return p, false, err
	}
	if err := json.Unmarshal(b, &p); err != nil {
		return livePoint{}, false, nil // damaged: trust nothing of the cache
	}
	return p, true, nil
}

func (p livePoint) save(dir string) error {
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return durable.WriteFile(filepath.Join(dir, livePointFile), b, 0o600)
}

// livePlan is what a live copy's backup does about the cache it finds.
type livePlan struct {
	since string // the backup is incremental against it: forget what changed
	next  string // the checkpoint the backup creates, "" for none
	whole bool   // the cache is complete: nothing to forget, no checkpoint
}

// planLive decides, before the backup or snapshot begins, what of the
// cache stays (see the package comment above livePointFile). bitmaps
// says whether the backup can create and use checkpoints (the backup API
// and qcow2 disks).
func (d *Driver) planLive(ctx context.Context, src *source, vm *VM, targets []string, bitmaps bool) (livePlan, error) {
	job := src.job
	dir := job.CacheDir
	rec, had, err := loadLivePoint(dir)
	if err != nil {
		return livePlan{}, err
	}
	prefix := checkpointPrefix(job)
	var p livePlan
	switch {
	case had && rec.Complete:
		p.whole = true
		return p, nil
	case had && rec.Checkpoint != "" && bitmaps && src.conn.CheckCheckpoint(ctx, vm.Name, rec.Checkpoint) == nil:
		p.since = rec.Checkpoint
		if err := src.conn.DeleteCheckpoints(ctx, vm.Name, prefix, rec.Checkpoint); err != nil {
			return livePlan{}, err
		}
	default:
		if had {
			job.Log.Warn("the cache holds an earlier point in time of the running VM and nothing tells what changed since: copying again",
				"vm", vm.Name, "checkpoint", rec.Checkpoint)
		}
		if err := resetCache(dir, targets); err != nil {
			return livePlan{}, err
		}
		if bitmaps {
			if err := src.conn.DeleteCheckpoints(ctx, vm.Name, prefix, ""); err != nil {
				return livePlan{}, err
			}
		}
		if err := (livePoint{}).save(dir); err != nil {
			return livePlan{}, err
		}
	}
	if bitmaps {
		if err := d.rememberWarm(job, vm.Name, vm.UUID); err != nil {
			return livePlan{}, err
		}
		if p.next, err = checkpointName(prefix); err != nil {
			return livePlan{}, err
		}
	}
	return p, nil
}

// begun is called once the backup began: chunks changed since p.since
// are forgotten, and p.next becomes the checkpoint of record.
func (d *Driver) begun(ctx context.Context, src *source, b *Backup, targets []string, p livePlan) error {
	if p.since != "" {
		for _, t := range targets {
			if err := d.forgetChanged(ctx, src, b, t); err != nil {
				return fmt.Errorf("disk %s: %w", t, err)
			}
		}
	}
	if p.next == "" {
		return nil
	}
	return livePoint{Checkpoint: p.next}.save(src.job.CacheDir)
}

// forgetChanged forgets, in disk's cache checkpoint, the chunks the
// incremental backup's dirty bitmap marks as changed.
func (d *Driver) forgetChanged(ctx context.Context, src *source, b *Backup, disk string) error {
	job := src.job
	path := cache.CheckpointPath(job.CacheDir, disk)
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	bitmap := b.ExportBitmap(disk)
	if bitmap == "" {
		return fmt.Errorf("the incremental backup offers no dirty bitmap for %s", disk)
	}
	nc, err := b.OpenDisk(ctx, disk)
	if err != nil {
		return err
	}
	c, err := nbd.NewClient(ctx, nc, nbd.Options{ExportName: disk, MetaContext: "qemu:dirty-bitmap:" + bitmap, Logger: job.Log})
	if err != nil {
		nc.Close()
		return fmt.Errorf("open the source export: %w", err)
	}
	defer c.Close()
	if !c.CanBlockStatus() {
		return fmt.Errorf("the source export of %s does not offer qemu:dirty-bitmap:%s", disk, bitmap)
	}
	exts, err := c.Extents(ctx, 0, c.Size())
	if err != nil {
		return fmt.Errorf("dirty bitmap %s: %w", bitmap, err)
	}
	ckpt, err := pipeline.LoadCheckpoint(path, c.Size(), pipeline.DefaultChunkSize)
	if err != nil {
		return err
	}
	var changed int64
	forgot := 0
	for _, e := range exts {
		if !e.Dirty() {
			continue
		}
		changed += e.Length
		n, err := ckpt.Forget(e.Offset, e.Length)
		if err != nil {
			return err
		}
		forgot += n
	}
	if forgot > 0 {
		if err := cache.NewGeneration(job.CacheDir, disk); err != nil {
			return err
		}
	}
	job.Log.Info("cache kept from an earlier point in time; what changed since is copied again", "disk", disk,
		"changed_bytes", changed, "chunks_forgotten", forgot)
	return nil
}

// liveCopied records that the cache holds every disk, of one point in
// time: a restart keeps it whole, even when the agent dies before the
// backup or snapshot it came from has ended.
func liveCopied(job *runner.Job) error {
	return livePoint{Complete: true}.save(job.CacheDir)
}

// liveEnded deletes the job's checkpoints once a complete copy's backup
// has ended: none is needed any more.
func (d *Driver) liveEnded(ctx context.Context, src *source, vm *VM, p livePlan) {
	if p.next == "" && p.since == "" {
		return
	}
	job := src.job
	err := src.conn.DeleteCheckpoints(ctx, vm.Name, checkpointPrefix(job), "")
	if err != nil {
		job.Log.Warn("delete the copy's checkpoints; the janitor does once the cache is gone", "vm", vm.Name, "err", err)
	}
	d.forgetWarm(job, err == nil)
}

// coldPoint is a cold copy's start, once its export found the images'
// stamps: the cache stays when it holds these very images (an earlier
// cold copy of them, untouched since) or a whole copy of one point in
// time; otherwise (a partial live copy, images changed, a cache without
// a record) it starts over.
func coldPoint(job *runner.Job, targets []string, stamps string) error {
	rec, had, err := loadLivePoint(job.CacheDir)
	switch {
	case err != nil:
		return err
	case had && rec.Stamps != "" && rec.Stamps == stamps:
		return nil
	case had && rec.Complete:
		return nil
	}
	cached := slices.ContainsFunc(targets, func(t string) bool {
		_, err := os.Stat(cache.CheckpointPath(job.CacheDir, t))
		return err == nil
	})
	if had || cached {
		job.Log.Warn("the cache holds another point in time of the VM than its images now: copying them again",
			"images_then", rec.Stamps, "images_now", stamps)
		if err := resetCache(job.CacheDir, targets); err != nil {
			return err
		}
	}
	return livePoint{Stamps: stamps}.save(job.CacheDir)
}

// coldCopied is liveCopied for a cold copy of the images of stamps.
func coldCopied(job *runner.Job, stamps string) error {
	return livePoint{Complete: true, Stamps: stamps}.save(job.CacheDir)
}

// resetCache removes the cache images of targets and all that describes
// them (cache.Reset): the copy starts over.
func resetCache(dir string, targets []string) error {
	for _, t := range targets {
		if err := cache.Reset(dir, t); err != nil {
			return err
		}
	}
	return nil
}
