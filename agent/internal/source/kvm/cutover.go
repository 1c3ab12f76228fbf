package kvm

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"libvirt.org/go/libvirt"

	"github.com/ferry-v2v/ferry/agent/internal/pipeline"
	"github.com/ferry-v2v/ferry/agent/internal/runner"
	"github.com/ferry-v2v/ferry/pkg/nbd"
)

// The cutover of a KVM warm job: StopSource connects and checks what the
// last round needs while the VM still runs, then stops it: by a guest
// shutdown (powered off after the guest shutdown timeout), or paused with
// options.pause_source_vm. The last round (Round, after StopSource) makes
// no new checkpoint and sends its delta straight to the job's
// CutoverSink: read from an incremental backup of the paused VM, or from
// the shut-off VM's images through qemu-nbd with the previous round's
// dirty bitmaps (shutOffRound).

// stopKind is how StopSource stopped a job's source VM.
type stopKind int

const (
	notStopped  stopKind = iota
	stopPaused           // paused (options.pause_source_vm): QEMU still runs
	stopShutOff          // shut down by its guest, or powered off after the timeout
)

var _ runner.CutoverForwarder = (*Driver)(nil)

// ForwardsCutover: the cutover's round reads its delta straight onto the
// target's volumes when the job has a CutoverSink (forwardDelta).
func (d *Driver) ForwardsCutover() bool { return true }

// cutoverPlan is what StopSource prepared, while the VM still ran, for
// the cutover's round: its connection and what prepareRound checks.
type cutoverPlan struct {
	src  *source
	plan roundPlan
}

// checkCutover finishes a plan StopSource prepared: the cutover's round
// goes on from prev, which must still be there, and makes no checkpoint
// (nothing follows it; EndWarm would only delete it again).
func (d *Driver) checkCutover(ctx context.Context, src *source, p *roundPlan, prev string) error {
	if prev == "" {
		return errors.New("the cutover's round has no earlier round to go on from")
	}
	p.next = ""
	return src.conn.CheckCheckpoint(ctx, src.job.Assignment.GetJob().GetSourceVm(), prev)
}

// forwardDelta reads the runs of the cutover's round and hands each piece
// straight to the sink (the target volumes), not the cache.
func forwardDelta(ctx context.Context, job *runner.Job, c *nbd.Client, sink runner.DeltaSink, dd runner.DiskDelta, runs [][2]int64) (runner.DiskDelta, error) {
	dd.Forwarded = true
	err := eachPiece(ctx, runs, &dd, func(ctx context.Context, off, n int64) (pipeline.Extent, error) {
		if err := job.Downstream.WaitN(ctx, int(n)); err != nil {
			return pipeline.Extent{}, err
		}
		buf := make([]byte, n)
		if err := c.ReadAt(ctx, buf, off); err != nil {
			return pipeline.Extent{}, fmt.Errorf("read %d bytes at %d: %w", n, off, err)
		}
		e := pipeline.Extent{Offset: off, Length: n, Zero: !slices.ContainsFunc(buf, func(b byte) bool { return b != 0 })}
		data := buf
		if e.Zero {
			data = nil
		}
		return e, sink.Write(ctx, dd.Disk, e, data)
	})
	if err != nil {
		return dd, err
	}
	job.Log.Info("cutover delta sent to the target", "disk", dd.Disk, "changed_bytes", dd.ChangedBytes, "read_bytes", dd.ReadBytes,
		"extents", len(runs))
	return dd, nil
}

// StopSource stops the source VM for the cutover, so that the last round
// sees every write it made: by default it asks the guest to shut down
// (its page cache flushed: the target gets a clean image) and powers the
// VM off when it did not within the guest shutdown timeout; with
// options.pause_source_vm it pauses it (crash-consistent, and quicker).
// What that round needs that does not depend on the last delta (the
// connection, the checks of prepareRound, and for a shutdown that the
// images can be read without QEMU) is done first, while the VM still
// runs, and kept for it. EndWarm settles the VM: after a failed cutover
// it runs again; after a successful one it stays shut off, or paused.
func (d *Driver) StopSource(ctx context.Context, job *runner.Job) error {
	src := &source{d: d, job: job}
	if err := src.connectFirst(ctx); err != nil {
		return err
	}
	kept := false
	defer func() {
		if !kept {
			src.conn.Close()
		}
	}()
	p, err := d.checkRound(ctx, src)
	if err != nil {
		return err
	}
	dom, err := src.conn.domain(job.Assignment.GetJob().GetSourceVm())
	if err != nil {
		return err
	}
	defer dom.Free()
	state, _, err := dom.GetState()
	if err != nil {
		return err
	}
	pause := job.Assignment.GetJob().GetOptions().GetPauseSourceVm()
	switch {
	case state != libvirt.DOMAIN_RUNNING:
		if err := d.adoptStop(ctx, src, &p, state); err != nil {
			return err
		}
	case pause:
		if err := d.setStopped(job, stopPaused); err != nil {
			return err
		}
		job.SourceStopped()
		if err := dom.Suspend(); err != nil {
			return fmt.Errorf("pause the source VM: %w", err)
		}
		job.Log.Info("source VM paused for the cutover")
	default:
		if err := src.conn.checkShutOffRound(ctx, p); err != nil {
			return err
		}
		if err := d.shutDown(ctx, job, dom); err != nil {
			return err
		}
	}
	d.mu.Lock()
	p.stopped = d.stopped[job.Name()]
	if old := d.cutover[job.Name()]; old != nil {
		old.src.conn.Close()
	}
	d.cutover[job.Name()] = &cutoverPlan{src: src, plan: p}
	d.mu.Unlock()
	kept = true
	return nil
}

// setStopped records how StopSource is about to stop the job's source
// VM: in memory, and in the job's cache (runner.Job.MarkSourceStopped)
// for an agent killed in the cutover and back.
func (d *Driver) setStopped(job *runner.Job, k stopKind) error {
	if err := job.MarkSourceStopped(k.String()); err != nil {
		return err
	}
	d.mu.Lock()
	d.stopped[job.Name()] = k
	d.mu.Unlock()
	return nil
}

func (k stopKind) String() string {
	switch k {
	case stopPaused:
		return "paused"
	case stopShutOff:
		return "shut-off"
	}
	return "running"
}

// markedStop is how the job's cache records that an agent stopped the
// source VM for the cutover (notStopped without a record), and when.
func markedStop(job *runner.Job) (stopKind, time.Time) {
	how, at, ok := job.SourceStoppedMark()
	if !ok {
		return notStopped, time.Time{}
	}
	switch how {
	case stopPaused.String():
		return stopPaused, at
	case stopShutOff.String():
		return stopShutOff, at
	}
	return notStopped, time.Time{}
}

// adoptStop is StopSource finding the VM not running: when the job's
// cache records that an agent killed in the cutover stopped it, this one
// goes on with the cutover as that one would have (the last round read
// from the VM as it is, shut off or paused) and starts the VM again if the
// cutover fails; the downtime counts from the recorded stop. A VM stopped
// by someone else is left as it is.
func (d *Driver) adoptStop(ctx context.Context, src *source, p *roundPlan, state libvirt.DomainState) error {
	job := src.job
	k, at := markedStop(job)
	switch {
	case k == notStopped:
		job.Log.Info("the source VM is not running; nothing to stop", "state", stateName(state))
		return nil
	case state == libvirt.DOMAIN_SHUTOFF:
		k = stopShutOff
		if err := src.conn.checkShutOffRound(ctx, *p); err != nil {
			return err
		}
	case state == libvirt.DOMAIN_PAUSED:
		k = stopPaused
	default:
		job.Log.Info("the source VM is neither shut off nor paused; nothing to stop", "state", stateName(state))
		return nil
	}
	d.mu.Lock()
	d.stopped[job.Name()] = k
	d.mu.Unlock()
	job.SourceStoppedAt(at)
	job.Log.Info("the source VM was stopped for the cutover by the agent before this one", "state", stateName(state), "stopped_at", at)
	return nil
}
