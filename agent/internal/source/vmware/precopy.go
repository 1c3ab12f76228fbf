package vmware

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
	"github.com/ferry-v2v/ferry/agent/internal/runner"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// PrecopyStateFile is the file in a job's cache directory that records
// the last round a precopy completed: its number and each disk's change
// id. It is written once every disk of the round is durable in the cache,
// so a restarted agent resumes at the next round, never from a mix.
const PrecopyStateFile = "vmware-precopy.json"

// PrecopyOptions tune a warm copy.
type PrecopyOptions struct {
	// EnableCBT is the operator's consent to turn changed-block tracking
	// on for a VM that has it off (the job option CBTConsentOption).
	EnableCBT bool
}

// Precopy copies the disks of a running VM into the cache in rounds, for
// a warm migration. Each round takes a snapshot of the VM (no memory, not
// quiesced), asks changed-block tracking (QueryChangedDiskAreas) which
// areas of each disk changed since the previous round's change id ("*",
// every allocated area, in the first round), reads only those areas of
// the snapshot's frozen base disk by byte ranges through the datastore's
// HTTP access, writes them into each disk's cache image, and removes the
// snapshot however the round ends (success, failure, cancel). Reads draw
// on the job's downstream limiter and report the job's progress per disk.
//
// The first round starts each cache image anew and records its checksums
// as a cold copy does; later rounds write into the images in place
// (zeroes included: a changed area that now reads as zeroes is zeroed)
// and remove the checksums, which no longer describe the image.
//
// A Precopy is used by one goroutine: Round after Round, then Close.
type Precopy struct {
	d     *Driver
	job   *runner.Job
	conn  *Conn
	vm    *VM
	disks []Disk
	opts  PrecopyOptions
	// dcPath is the VM's datacenter path, for datastore file URLs.
	dcPath     string
	compressed bool
	state      precopyState
	cbtEnabled bool
}

// precopyState is PrecopyStateFile's content.
type precopyState struct {
	VM string `json:"vm"`
	// Round is the last round completed, 0 before the first.
	Round int `json:"round"`
	// ChangeIDs holds each disk's change id as of that round.
	ChangeIDs map[string]string `json:"change_ids"`
}

// RoundResult says what one round did.
type RoundResult struct {
	// Round counts from 1; Full tells a first round (every allocated area).
	Round int
	Full  bool
	Disks []DiskRound
	// ChangedBytes sums what tracking reported changed, ReadBytes what was
	// read from the source (retries included), WrittenBytes what the
	// areas written into the cache span (granule-aligned).
	ChangedBytes, ReadBytes, WrittenBytes int64
	Duration                              time.Duration
}

// DiskRound is one disk's part of a round.
type DiskRound struct {
	Disk string
	// PrevChangeID is what the changes were asked against (FirstChangeID
	// in a first round); ChangeID is the disk's change id as of this round,
	// the next round's PrevChangeID.
	PrevChangeID, ChangeID string
	// Changed are the areas tracking reported; Written are the
	// granule-aligned areas written into the cache image (what an upload
	// of this round must carry on to the target).
	Changed, Written []Area
	ChangedBytes     int64
	ReadBytes        int64
	// Retries counts the reads tried again after a connection broke.
	Retries int64
}

// StartPrecopy connects to the job's source, finds the VM and its disks,
// runs the pre-checks and makes sure changed-block tracking is on (turning
// it on only with opts.EnableCBT). It resumes after the last round a
// previous run completed when the cache directory records one for this VM
// and every disk's image is there. The VM is left running.
func (d *Driver) StartPrecopy(ctx context.Context, job *runner.Job, opts PrecopyOptions) (*Precopy, error) {
	a := job.Assignment
	conn, err := d.connect(ctx, a.GetSource(), a.GetMigrationServer(), a.GetSecrets(), job.Log)
	if err != nil {
		return nil, err
	}
	p := &Precopy{d: d, job: job, conn: conn, opts: opts,
		compressed: a.GetJob().GetOptions().GetCompression() != ferryv1.Compression_COMPRESSION_NONE}
	if err := p.start(ctx); err != nil {
		conn.Close()
		return nil, err
	}
	return p, nil
}

func (p *Precopy) start(ctx context.Context) error {
	a := p.job.Assignment
	vm, err := p.conn.FindVM(ctx, a.GetJob().GetSourceVm())
	if err != nil {
		return err
	}
	p.vm = vm
	if p.disks, err = SelectDisks(vm, a.GetJob().GetTarget().GetDisks()); err != nil {
		return err
	}
	if err := Precheck(vm, p.disks); err != nil {
		return err
	}
	if p.cbtEnabled, err = p.conn.EnsureCBT(ctx, vm, p.opts.EnableCBT, p.job.Log); err != nil {
		return err
	}
	if p.dcPath, err = p.conn.datacenterPath(ctx, vm); err != nil {
		return err
	}
	if err := cache.SaveSourceVM(p.job.CacheDir, vm.Proto(), nil); err != nil {
		return fmt.Errorf("save the source VM's description: %w", err)
	}
	p.state = p.loadState()
	if p.state.Round > 0 {
		p.job.Log.Info("warm copy resumes after the last round completed", "round", p.state.Round)
	}
	return p.conn.removeStaleSnapshots(ctx, vm)
}

// CBTEnabled tells whether StartPrecopy turned changed-block tracking on.
func (p *Precopy) CBTEnabled() bool { return p.cbtEnabled }

// Rounds is the number of the last round completed (0 before the first).
func (p *Precopy) Rounds() int { return p.state.Round }

// VM is the source VM as found when the precopy started.
func (p *Precopy) VM() *VM { return p.vm }

// Close logs out.
func (p *Precopy) Close() error { return p.conn.Close() }

// loadState reads the state a previous run left, when it is this VM's
// and every disk has its change id and cache image; otherwise the next
// round is a first round.
func (p *Precopy) loadState() precopyState {
	fresh := precopyState{VM: p.vm.ID(), ChangeIDs: map[string]string{}}
	b, err := os.ReadFile(filepath.Join(p.job.CacheDir, PrecopyStateFile))
	if err != nil {
		return fresh
	}
	var st precopyState
	if json.Unmarshal(b, &st) != nil || st.VM != p.vm.ID() || st.Round <= 0 {
		return fresh
	}
	for _, d := range p.disks {
		if st.ChangeIDs[d.Name] == "" || !p.haveImage(d) {
			return fresh
		}
	}
	return st
}

func (p *Precopy) haveImage(d Disk) bool {
	format := cache.FormatRaw
	if p.compressed {
		format = cache.FormatQcow2
	}
	_, err := os.Stat(filepath.Join(p.job.CacheDir, d.Name+"."+format))
	return err == nil
}

// saveState records a completed round, atomically.
func (p *Precopy) saveState(st precopyState) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	file := filepath.Join(p.job.CacheDir, PrecopyStateFile)
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("record the precopy round: %w", err)
	}
	if err := os.Rename(tmp, file); err != nil {
		return fmt.Errorf("record the precopy round: %w", err)
	}
	return nil
}

// Round runs the next round: a snapshot, the changed areas of every disk
// read into the cache (all disks at once), the snapshot removed. A round
// that fails leaves the recorded state at the previous round: the next
// round asks again against its change ids, which covers whatever the
// failed round wrote.
func (p *Precopy) Round(ctx context.Context) (res *RoundResult, err error) {
	start := time.Now()
	n := p.state.Round + 1
	res = &RoundResult{Round: n, Full: p.state.Round == 0}
	log := p.job.Log.With("round", n)
	snap, err := p.snapshot(ctx, n)
	if err != nil {
		return nil, err
	}
	defer func() {
		if rerr := p.removeSnapshot(ctx, snap, log); rerr != nil {
			err = errors.Join(err, rerr)
			if res != nil && err != nil {
				res = nil
			}
		}
	}()
	backings, err := p.snapshotDisks(ctx, snap)
	if err != nil {
		return nil, err
	}
	res.Disks = make([]DiskRound, len(p.disks))
	g, gctx := errgroup.WithContext(ctx)
	for i, disk := range p.disks {
		prev := FirstChangeID
		if !res.Full {
			prev = p.state.ChangeIDs[disk.Name]
		}
		g.Go(func() error {
			dr, err := p.copyDisk(gctx, snap, disk, backings[disk.Key], prev, log)
			if err != nil {
				return fmt.Errorf("disk %s: %w", disk.Name, err)
			}
			res.Disks[i] = dr
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	next := precopyState{VM: p.vm.ID(), Round: n, ChangeIDs: map[string]string{}}
	for _, dr := range res.Disks {
		next.ChangeIDs[dr.Disk] = dr.ChangeID
		res.ChangedBytes += dr.ChangedBytes
		res.ReadBytes += dr.ReadBytes
		res.WrittenBytes += sumAreas(dr.Written)
	}
	if err := p.saveState(next); err != nil {
		return nil, err
	}
	p.state = next
	res.Duration = time.Since(start)
	log.Info("precopy round done", "full", res.Full, "changed_bytes", res.ChangedBytes, "read_bytes", res.ReadBytes,
		"seconds", res.Duration.Seconds())
	return res, nil
}

// snapshot takes round n's snapshot: no memory, not quiesced.
func (p *Precopy) snapshot(ctx context.Context, n int) (types.ManagedObjectReference, error) {
	name := SnapshotPrefix + path.Base(p.job.Name()) + "-round-" + strconv.Itoa(n)
	task, err := object.NewVirtualMachine(p.conn.vim, p.vm.Ref).CreateSnapshot(ctx, name,
		"Ferry warm migration round; removed when the round ends", false, false)
	if err != nil {
		return types.ManagedObjectReference{}, fmt.Errorf("snapshot %s: %w", p.vm.Name, err)
	}
	r, err := task.WaitForResult(ctx)
	if err != nil {
		return types.ManagedObjectReference{}, fmt.Errorf("snapshot %s: %w", p.vm.Name, err)
	}
	snap, ok := r.Result.(types.ManagedObjectReference)
	if !ok {
		return types.ManagedObjectReference{}, fmt.Errorf("snapshot %s: the task returned %T, not a snapshot", p.vm.Name, r.Result)
	}
	p.job.Log.Info("snapshot taken", "snapshot", snap.Value, "name", name)
	return snap, nil
}

// removeSnapshot removes a round's snapshot, also after ctx ended.
func (p *Precopy) removeSnapshot(ctx context.Context, snap types.ManagedObjectReference, log *slog.Logger) error {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	if err := p.conn.removeSnapshot(rctx, snap); err != nil {
		return fmt.Errorf("remove the round's snapshot %s of %s (the next round or export removes it): %w", snap.Value, p.vm.Name, err)
	}
	log.Info("snapshot removed", "snapshot", snap.Value)
	return nil
}

// snapshotDisks reads the disk backings of the snapshot: the frozen base
// disks and their change ids.
func (p *Precopy) snapshotDisks(ctx context.Context, snap types.ManagedObjectReference) (map[int32]*types.VirtualDiskFlatVer2BackingInfo, error) {
	var m mo.VirtualMachineSnapshot
	if err := property.DefaultCollector(p.conn.vim).RetrieveOne(ctx, snap, []string{"config.hardware.device"}, &m); err != nil {
		return nil, fmt.Errorf("disks of snapshot %s of %s: %w", snap.Value, p.vm.Name, err)
	}
	out := map[int32]*types.VirtualDiskFlatVer2BackingInfo{}
	for _, dev := range m.Config.Hardware.Device {
		disk, ok := dev.(*types.VirtualDisk)
		if !ok {
			continue
		}
		if b, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok {
			out[disk.Key] = b
		}
	}
	for _, d := range p.disks {
		b := out[d.Key]
		switch {
		case b == nil:
			return nil, fmt.Errorf("%w: disk %s (%s) of %s is not a flat disk; a warm copy reads flat disks by offset",
				ErrCBT, d.Name, d.Label, p.vm.Name)
		case b.Parent != nil:
			return nil, fmt.Errorf("%w: disk %s (%s) of %s is a delta of the VM's own snapshot %s; remove the VM's snapshots "+
				"before a warm migration", ErrCBT, d.Name, d.Label, p.vm.Name, b.Parent.FileName)
		case b.ChangeId == "":
			return nil, fmt.Errorf("%w: the snapshot of disk %s (%s) of %s carries no change id: changed-block tracking "+
				"is not active on it yet", ErrCBT, d.Name, d.Label, p.vm.Name)
		}
	}
	return out, nil
}

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
	extents, err := p.conn.flatLayout(ctx, p.dcPath, b.FileName, disk.CapacityBytes)
	if err != nil {
		return dr, err
	}
	full := prev == FirstChangeID
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
	var done int64
	for _, a := range dr.Written {
		if err := sink.begin(ctx, a); err != nil {
			return dr, err
		}
		if err := r.copyArea(ctx, a, sink, func(n int64) { p.job.Progress.Set(disk.Name, done+n) }); err != nil {
			return dr, err
		}
		done += a.Length
		sink.seal(a.End())
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
