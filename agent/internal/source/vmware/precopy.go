package vmware

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"strconv"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
	"github.com/ferry-v2v/ferry/agent/internal/pipeline"
	"github.com/ferry-v2v/ferry/agent/internal/runner"
	"github.com/ferry-v2v/ferry/pkg/backoff"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// PrecopyOptions tune a warm copy.
type PrecopyOptions struct {
	// EnableCBT is the operator's consent to turn changed-block tracking
	// on for a VM that has it off (the job option CBTConsentOption).
	EnableCBT bool
	// Token is the Token of the last round completed, from which the next
	// round goes on; empty starts with a first round (a full copy).
	Token string
}

// Precopy copies the disks of a running VM into the cache in rounds, for
// a warm migration. Each round takes a snapshot of the VM (no memory, not
// quiesced), asks changed-block tracking (QueryChangedDiskAreas) which
// areas of each disk changed since the previous round's change id ("*",
// every allocated area, in the first round), reads only those areas of
// the snapshot's frozen base disk by byte ranges through the datastore's
// HTTP access, writes them into each disk's cache image, and removes the
// snapshot however the round ends (success, failure, cancel). All disks
// are read at once, and up to four areas (or 32 MiB pieces of one) of each
// disk, each on an HTTP request of its own. Reads draw on the job's
// downstream limiter, are retried from where they broke for the retry
// budget, and report the job's progress per disk.
//
// The first round starts each cache image anew and records its checksums
// as a cold copy does; later rounds write into the images in place
// (zeroes included: a changed area that now reads as zeroes is zeroed)
// and remove the checksums, which no longer describe the image.
//
// The restart point is the Token of the last round completed: a new
// Precopy given it goes on with the next round. A round that fails leaves
// the Token as it was; the next round asks against the same change ids,
// which covers whatever the failed round wrote.
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

// precopyState is what a Token holds.
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
	// Token names the source's state as of this round: the restart point.
	Token string
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
	// granule-aligned areas written into the cache image.
	Changed, Written []Area
	// Extents are Written as the upload of a later round takes them: in
	// order, apart, Zero where the whole area now reads as zeroes; empty
	// (not nil) when nothing changed, nil in a first round, whose upload
	// takes the whole image.
	Extents      []pipeline.Extent
	ChangedBytes int64
	ReadBytes    int64
	// Retries counts the reads tried again after a connection broke.
	Retries int64
}

// StartPrecopy connects to the job's source, finds the VM and its disks,
// runs the pre-checks and makes sure changed-block tracking is on (turning
// it on only with opts.EnableCBT). Its first round goes on from
// opts.Token. The VM is left running.
func (d *Driver) StartPrecopy(ctx context.Context, job *runner.Job, opts PrecopyOptions) (*Precopy, error) {
	a := job.Assignment
	conn, err := d.connect(ctx, a.GetSource(), a.GetMigrationServer(), a.GetSecrets(), job.Log)
	if err != nil && backoff.Transport(err) && ctx.Err() == nil {
		job.Log.Warn("the source is unreachable; trying again", "err", err)
		conn, _, err = d.redial(ctx, job, err, nil)
	}
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
	if p.state, err = parseToken(p.opts.Token, vm); err != nil {
		return err
	}
	if p.disks, err = SelectDisks(vm, a.GetJob().GetTarget().GetDisks()); err != nil {
		return err
	}
	if err := Precheck(vm, p.disks); err != nil {
		return err
	}
	for _, d := range p.disks {
		if p.state.Round == 0 {
			continue
		}
		if p.state.ChangeIDs[d.Name] == "" {
			return fmt.Errorf("%w: the precopy token has no change id of disk %s: restart the job for a new full copy", ErrCBT, d.Name)
		}
		if err := p.checkImage(d); err != nil {
			return err
		}
	}
	if p.cbtEnabled, err = p.conn.EnsureCBT(ctx, vm, p.opts.EnableCBT, p.job.Log); err != nil {
		return err
	}
	if p.cbtEnabled && p.state.Round > 0 {
		return fmt.Errorf("%w: tracking was off on VM %s after round %d, so its change ids no longer tell what changed; "+
			"restart the job for a new full copy", ErrCBT, vm.Name, p.state.Round)
	}
	if p.dcPath, err = p.conn.datacenterPath(ctx, vm); err != nil {
		return err
	}
	if p.state.Round == 0 {
		if err := cache.SaveSourceVM(p.job.CacheDir, vm.Proto(), nil); err != nil {
			return fmt.Errorf("save the source VM's description: %w", err)
		}
	}
	return p.conn.removeStaleSnapshots(ctx, vm)
}

// parseToken reads a Token of vm; empty is no round done.
func parseToken(token string, vm *VM) (precopyState, error) {
	st := precopyState{VM: vm.ID(), ChangeIDs: map[string]string{}}
	if token == "" {
		return st, nil
	}
	if err := json.Unmarshal([]byte(token), &st); err != nil || st.Round <= 0 || st.ChangeIDs == nil {
		return precopyState{}, fmt.Errorf("%w: precopy token %q is not one of this driver's", ErrCBT, token)
	}
	if st.VM != vm.ID() {
		return precopyState{}, fmt.Errorf("%w: precopy token of VM %s, not %s", ErrCBT, st.VM, vm.ID())
	}
	return st, nil
}

// Token is the restart point after the last round completed: empty
// before the first, else the round's number and each disk's change id.
func (p *Precopy) Token() string {
	if p.state.Round == 0 {
		return ""
	}
	b, _ := json.Marshal(p.state) // strings and ints only
	return string(b)
}

// CBTEnabled tells whether StartPrecopy turned changed-block tracking on.
func (p *Precopy) CBTEnabled() bool { return p.cbtEnabled }

// Rounds is the number of the last round completed (0 before the first).
func (p *Precopy) Rounds() int { return p.state.Round }

// VM is the source VM as found when the precopy started.
func (p *Precopy) VM() *VM { return p.vm }

// Close logs out.
func (p *Precopy) Close() error { return p.conn.Close() }

// Round runs the next round: a snapshot, the changed areas of every disk
// read into the cache (all disks at once), the snapshot removed.
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
			err, res = errors.Join(err, rerr), nil
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
	p.state = next
	res.Token = p.Token()
	res.Duration = time.Since(start)
	log.Info("precopy round copied to the cache", "full", res.Full, "changed_bytes", res.ChangedBytes,
		"read_bytes", res.ReadBytes, "seconds", res.Duration.Seconds())
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
