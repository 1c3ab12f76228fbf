package vmware

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/ferry-v2v/ferry/agent/internal/runner"
)

// Round is the runner's Warmer round (runner.Warmer): WarmRound with the
// job's consent to turn changed-block tracking on (options.enable_cbt),
// its DiskRounds mapped one for one onto runner.DiskDelta.
func (d *Driver) Round(ctx context.Context, job *runner.Job, prev string) (runner.RoundResult, error) {
	r, err := d.WarmRound(ctx, job, prev, job.Assignment.GetJob().GetOptions().GetEnableCbt())
	if err != nil {
		return runner.RoundResult{}, err
	}
	out := runner.RoundResult{Token: r.Token}
	for _, dr := range r.Disks {
		out.Disks = append(out.Disks, runner.DiskDelta{Disk: dr.Disk, Extents: dr.Extents,
			ChangedBytes: dr.ChangedBytes, ReadBytes: dr.ReadBytes})
	}
	return out, nil
}

var _ runner.Warmer = (*Driver)(nil)

// stoppedVMs records the jobs whose source VM StopSource powered off, so
// that EndWarm powers it on again when the cutover failed. The record is
// also kept in the job's cache directory (runner.Job.MarkSourceStopped):
// an agent killed in the cutover and back finds the VM off, and must
// still power it on again if the cutover then fails.
type stoppedVMs struct {
	mu   sync.Mutex
	jobs map[string]bool
}

func (s *stoppedVMs) set(job string, stopped bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.jobs == nil {
		s.jobs = map[string]bool{}
	}
	if stopped {
		s.jobs[job] = true
	} else {
		delete(s.jobs, job)
	}
}

func (s *stoppedVMs) take(job string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	stopped := s.jobs[job]
	delete(s.jobs, job)
	return stopped
}

// WarmRound runs one round of a warm job on a connection of its own: from
// the round that returned the token prev, or a first round (a full copy
// into new cache images) when prev is empty. enableCBT is the operator's
// consent to turn changed-block tracking on (CBTConsentOption). The round
// is repeatable from prev however far an earlier attempt got; vSphere
// keeps what prev needs (the change ids) for as long as tracking stays on.
func (d *Driver) WarmRound(ctx context.Context, job *runner.Job, prev string, enableCBT bool) (*RoundResult, error) {
	p, err := d.StartPrecopy(ctx, job, PrecopyOptions{EnableCBT: enableCBT, Token: prev})
	if err != nil {
		return nil, err
	}
	defer p.Close()
	return p.Round(ctx)
}

// StopSource stops the job's source VM for the cutover: a guest shutdown
// through VMware Tools, then a power-off once the assignment's shutdown
// timeout passed. A VM already off is left as it is.
func (d *Driver) StopSource(ctx context.Context, job *runner.Job) error {
	a := job.Assignment
	conn, err := d.connect(ctx, a.GetSource(), a.GetMigrationServer(), a.GetSecrets(), job.Log)
	if err != nil {
		return err
	}
	defer conn.Close()
	vm, err := conn.FindVM(ctx, a.GetJob().GetSourceVm())
	if err != nil {
		return err
	}
	if vm.PowerState != types.VirtualMachinePowerStatePoweredOn {
		if _, at, ok := job.SourceStoppedMark(); ok {
			// An agent killed in the cutover stopped it: the downtime
			// counts from then.
			job.SourceStoppedAt(at)
			job.Log.Info("the source VM was stopped for the cutover by the agent before this one", "stopped_at", at)
			return nil
		}
		job.Log.Info("the source VM is not running; nothing to stop", "state", vm.PowerState)
		return nil
	}
	if err := job.MarkSourceStopped("powered-off"); err != nil {
		return err
	}
	d.stopped.set(job.Name(), true)
	if err := conn.PowerDown(ctx, vm, shutdownTimeout(a, conn.cfg.ShutdownTimeout), job.Log); err != nil {
		return err
	}
	job.Log.Info("source VM stopped for the cutover")
	return nil
}

// EndWarm removes the snapshots rounds of the job may have left (a round
// removes its own; this covers an agent that died in one) and, when the
// cutover did not succeed after StopSource stopped the VM (this agent's
// or one killed before it), powers the source on again. Changed-block
// tracking is left on. It is idempotent.
func (d *Driver) EndWarm(ctx context.Context, job *runner.Job, succeeded bool) error {
	_, _, marked := job.SourceStoppedMark()
	stopped := d.stopped.take(job.Name()) || marked
	a := job.Assignment
	conn, err := d.connect(ctx, a.GetSource(), a.GetMigrationServer(), a.GetSecrets(), job.Log)
	if err != nil {
		return err
	}
	defer conn.Close()
	vm, err := conn.FindVM(ctx, a.GetJob().GetSourceVm())
	if err != nil {
		return err
	}
	var errs []error
	if err := conn.removeStaleSnapshots(ctx, vm); err != nil {
		errs = append(errs, err)
	}
	if stopped && !succeeded {
		task, err := object.NewVirtualMachine(conn.vim, vm.Ref).PowerOn(ctx)
		if err == nil {
			err = task.Wait(ctx)
		}
		if err != nil {
			// The record stays: the VM is still to be powered on.
			return errors.Join(append(errs, fmt.Errorf("power the source VM %s on again after a failed cutover: %w", vm.Name, err))...)
		}
		job.Log.Info("source VM powered on again: the cutover did not finish")
	}
	if err := job.UnmarkSourceStopped(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
