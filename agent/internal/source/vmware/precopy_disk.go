package vmware

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/errgroup"

	"github.com/vmware/govmomi/vim25/types"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
	"github.com/ferry-v2v/ferry/agent/internal/pipeline"
)

// copyDisk reads one disk's changed areas into its cache image.
func (p *Precopy) copyDisk(ctx context.Context, snap types.ManagedObjectReference, disk Disk,
	b *types.VirtualDiskFlatVer2BackingInfo, prev string, log *slog.Logger) (DiskRound, error) {
	dr := DiskRound{Disk: disk.Name, PrevChangeID: prev, ChangeID: b.ChangeId}
	changed, err := p.conn.ChangedAreas(ctx, p.vm, snap, disk.Key, disk.CapacityBytes, prev)
	if err != nil {
		return dr, err
	}
	dr.Changed, dr.ChangedBytes = changed, sumAreas(changed)
	dr.Written = alignAreas(changed, cache.Granule, disk.CapacityBytes)
	full := prev == FirstChangeID
	if !full && len(dr.Written) == 0 {
		// Nothing changed: nothing to read, the image is left as it is.
		dr.Extents = []pipeline.Extent{}
		p.job.Progress.SetTotal(disk.Name, 0)
		log.Info("nothing changed on the disk", "disk", disk.Name)
		return dr, nil
	}
	extents, err := p.conn.flatLayout(ctx, p.dcPath, b.FileName, disk.CapacityBytes)
	if err != nil {
		return dr, err
	}
	if full {
		if err := cache.Reset(p.job.CacheDir, disk.Name); err != nil {
			return dr, err
		}
	}
	img, err := cache.Open(ctx, p.job.CacheDir, disk.Name, disk.CapacityBytes, p.compressed, p.job.Log)
	if err != nil {
		return dr, err
	}
	defer img.Close()
	sink, finish, err := p.roundSink(img, disk, full)
	if err != nil {
		return dr, err
	}
	r := &areaReader{conn: p.conn, extents: extents, lim: p.job.Downstream, policy: p.d.opts.policy(), log: p.job.Log}
	total := sumAreas(dr.Written)
	p.job.Progress.SetTotal(disk.Name, total)
	data, err := copyAreas(ctx, r, sink, dr.Written, func(done int64) { p.job.Progress.Set(disk.Name, done) })
	if err != nil {
		return dr, err
	}
	if !full {
		dr.Extents = make([]pipeline.Extent, len(dr.Written))
		for i, a := range dr.Written {
			dr.Extents[i] = pipeline.Extent{Offset: a.Offset, Length: a.Length, Zero: data[i] == 0}
		}
	}
	dr.ReadBytes, dr.Retries = r.read.Load(), r.retries.Load()
	if err := img.Flush(ctx); err != nil {
		return dr, err
	}
	if err := finish(ctx); err != nil {
		return dr, err
	}
	if err := img.Close(); err != nil {
		return dr, err
	}
	p.job.Progress.Set(disk.Name, total)
	log.Info("disk's changed areas copied to the cache", "disk", disk.Name, "areas", len(changed),
		"changed_bytes", dr.ChangedBytes, "read_bytes", dr.ReadBytes, "retries", dr.Retries)
	return dr, nil
}

// checkImage makes sure a later round has the image the rounds before it
// filled: a new, empty one would take only the changes.
func (p *Precopy) checkImage(disk Disk) error {
	format := cache.FormatRaw
	if p.compressed {
		format = cache.FormatQcow2
	}
	file := filepath.Join(p.job.CacheDir, disk.Name+"."+format)
	if _, err := os.Stat(file); err != nil {
		return fmt.Errorf("%w: round %d of disk %s needs the cache image the rounds before it filled (%s): %w; "+
			"restart the job for a new full copy", ErrCBT, p.state.Round+1, disk.Name, file, err)
	}
	return nil
}

// roundSink is where a round writes one disk: through the checksums on a
// first round (a new image, whose zeroes need no writing), straight into
// the image on later rounds, whose stale checksums are removed first.
// A compressed image cannot overwrite a cluster in place (qcow2 writes
// compressed clusters only where none is allocated): a later round
// zeroes each area first, which releases its clusters, then writes its
// data.
type roundSink struct {
	img  *cache.Image
	sums *summingSink // first round only
	// prezero zeroes each area before its data is written.
	prezero bool
}

// begin prepares area a for its data.
func (s *roundSink) begin(ctx context.Context, a Area) error {
	if !s.prezero {
		return nil
	}
	return s.img.WriteZeroes(ctx, a.Offset, a.Length)
}

func (p *Precopy) roundSink(img *cache.Image, disk Disk, full bool) (*roundSink, func(context.Context) error, error) {
	s := &roundSink{img: img}
	if !full {
		s.prezero = p.compressed
		for _, f := range []string{img.CheckpointPath(), cache.SumsPath(img.CheckpointPath())} {
			if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
				return nil, nil, fmt.Errorf("remove the checksums the round makes stale: %w", err)
			}
		}
		return s, func(context.Context) error { return nil }, nil
	}
	sums, err := newSummingSink(img, disk.CapacityBytes)
	if err != nil {
		return nil, nil, err
	}
	s.sums = sums
	return s, func(ctx context.Context) error {
		s.sums.sums.Seal(disk.CapacityBytes)
		if _, err := s.sums.sums.Finish(ctx, img); err != nil {
			return fmt.Errorf("record the checksums of the disk: %w", err)
		}
		return nil
	}, nil
}

func (s *roundSink) WriteAt(ctx context.Context, b []byte, off int64) error {
	if s.sums != nil {
		return s.sums.WriteAt(ctx, b, off)
	}
	return s.img.WriteAt(ctx, b, off)
}

func (s *roundSink) WriteZeroes(ctx context.Context, off, length int64) error {
	if s.sums != nil || s.prezero {
		return nil // zeroes already
	}
	return s.img.WriteZeroes(ctx, off, length)
}

// seal tells the checksums that nothing more is written below off.
func (s *roundSink) seal(off int64) {
	if s.sums != nil {
		s.sums.sums.Seal(off)
	}
}

// Reads of a round: an area longer than areaPiece is read as pieces, and
// up to areasInFlight pieces of a disk are read at once, each on its own
// HTTP request, so that many small areas do not wait on each other's
// round trips.
// areaPiece is a variable for tests: a multiple of cache.Granule.
var areaPiece int64 = 32 << 20

const areasInFlight = 4

// piece is a part of written area i.
type piece struct {
	Area
	i int
}

// copyAreas reads areas (granule-aligned, in order) into sink, several
// at once; progress gets the bytes done. It returns the data bytes
// written into each area (0: the area reads as zeroes). The checksums
// are sealed up to the first piece not done yet.
func copyAreas(ctx context.Context, r *areaReader, sink *roundSink, areas []Area, progress func(int64)) ([]int64, error) {
	var pieces []piece
	for i, a := range areas {
		for off := a.Offset; off < a.End(); off += areaPiece {
			pieces = append(pieces, piece{Area: Area{Offset: off, Length: min(areaPiece, a.End()-off)}, i: i})
		}
	}
	data := make([]atomic.Int64, len(areas))
	var done atomic.Int64
	var mu sync.Mutex
	finished, sealed := make([]bool, len(pieces)), 0
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(areasInFlight)
	for k, pc := range pieces {
		g.Go(func() error {
			if err := sink.begin(gctx, pc.Area); err != nil {
				return err
			}
			var last int64
			dst := &countingSink{areaSink: sink, n: &data[pc.i]}
			if err := r.copyArea(gctx, pc.Area, dst, func(n int64) {
				progress(done.Add(n - last))
				last = n
			}); err != nil {
				return err
			}
			mu.Lock()
			defer mu.Unlock()
			finished[k] = true
			for sealed < len(pieces) && finished[sealed] {
				sealed++
			}
			if sealed > 0 {
				sink.seal(pieces[sealed-1].End())
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	out := make([]int64, len(areas))
	for i := range data {
		out[i] = data[i].Load()
	}
	return out, nil
}

// countingSink counts the data bytes written through it.
type countingSink struct {
	areaSink
	n *atomic.Int64
}

func (c *countingSink) WriteAt(ctx context.Context, p []byte, off int64) error {
	c.n.Add(int64(len(p)))
	return c.areaSink.WriteAt(ctx, p, off)
}
