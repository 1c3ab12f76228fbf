package kvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/ferry-v2v/ferry/agent/internal/runner"
)

// The cutover of a KVM warm job by a guest shutdown: StopSource asks the
// guest to shut down (shutDown), the last round reads the shut-off VM's
// images through qemu-nbd with the previous round's dirty bitmaps
// (shutOffRound), and the checkpoints of a VM that stays shut off are
// removed from its images with qemu-img (removeBitmapsOffline): libvirt
// 9.0 deletes the bitmaps of a running VM's checkpoints only.

// DefaultShutdownTimeout is how long a guest shutdown may take when the
// assignment carries no guest shutdown timeout (the setting's default).
const DefaultShutdownTimeout = 10 * time.Minute

// shutOffPoll is how often shutDown looks whether the VM is shut off.
const shutOffPoll = 250 * time.Millisecond

// shutdownTimeout is the assignment's guest shutdown timeout (the
// coordinator's setting guest_shutdown_timeout), or the default.
func shutdownTimeout(job *runner.Job) time.Duration {
	if d := job.Assignment.GetGuestShutdownTimeout(); d != nil && d.CheckValid() == nil && d.AsDuration() > 0 {
		return d.AsDuration()
	}
	return DefaultShutdownTimeout
}

// checkShutOffRound checks, while the VM still runs, that the last round
// can read its disks once it is shut off: every disk a file or block
// device on the source host that qemu-nbd can serve (as the SSH user, or
// through sudo as SudoersFile allows).
func (c *Conn) checkShutOffRound(ctx context.Context, p roundPlan) error {
	e, err := c.newColdExport(p.vm, p.targets)
	if err == nil {
		images := make([]string, len(e.disks))
		for i, d := range e.disks {
			images[i] = d.Path
		}
		_, err = c.nbdThroughSudo(ctx, images)
	}
	if err != nil {
		return fmt.Errorf("a cutover by guest shutdown reads the last delta from the shut-off VM's images, "+
			"and cannot (set options.pause_source_vm to cut over paused instead): %w", err)
	}
	return nil
}

// shutDown asks the guest to shut down (the guest agent when the domain
// has one connected, else the ACPI power button: libvirt's default),
// waits up to the guest shutdown timeout for the VM to be shut off, and
// powers it off (destroys it) when it is not; the job's log and warnings
// say which happened. The downtime starts at the request.
func (d *Driver) shutDown(ctx context.Context, job *runner.Job, dom *libvirt.Domain) error {
	timeout := shutdownTimeout(job)
	// From here a failed cutover starts the VM again.
	if err := d.setStopped(job, stopShutOff); err != nil {
		return err
	}
	job.SourceStopped()
	msg := fmt.Sprintf("the source VM's guest did not shut down within the guest shutdown timeout (%s); "+
		"the VM was powered off for the cutover", timeout)
	if err := dom.Shutdown(); err != nil {
		job.Log.Warn("the guest cannot be asked to shut down; powering the source VM off", "err", err)
		msg = fmt.Sprintf("the source VM's guest could not be asked to shut down (%v); the VM was powered off for the cutover", err)
	} else {
		job.Log.Info("guest shutdown requested for the cutover", "timeout", timeout)
		done, err := waitShutOff(ctx, dom, timeout)
		if err != nil {
			return err
		}
		if done {
			job.Log.Info("source VM shut down by its guest for the cutover")
			return nil
		}
		job.Log.Warn("the guest did not shut down in time; powering the source VM off", "timeout", timeout)
	}
	if err := dom.Destroy(); err != nil {
		if state, _, serr := dom.GetState(); serr != nil || state != libvirt.DOMAIN_SHUTOFF {
			return fmt.Errorf("power off the source VM: %w", err)
		}
		job.Log.Info("source VM shut down by its guest for the cutover, as it was being powered off")
		return nil
	}
	job.Log.Warn(msg)
	job.Warn(msg)
	return nil
}

// waitShutOff waits up to timeout for dom to be shut off; done says it is.
func waitShutOff(ctx context.Context, dom *libvirt.Domain, timeout time.Duration) (done bool, err error) {
	deadline := time.Now().Add(timeout)
	t := time.NewTicker(shutOffPoll)
	defer t.Stop()
	for {
		state, _, err := dom.GetState()
		if err != nil {
			return false, fmt.Errorf("state of the source VM: %w", err)
		}
		if state == libvirt.DOMAIN_SHUTOFF {
			return true, nil
		}
		if !time.Now().Before(deadline) {
			return false, nil
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-t.C:
		}
	}
}

// shutOffRound is the cutover's round of a VM StopSource shut down: no
// QEMU runs to make a backup, so each disk image is served read-only by
// qemu-nbd offering the previous round's dirty bitmap (StartBitmapExport,
// over the cold copy's SSH path), and only the extents it marks are read
// and sent on, as from an incremental backup. A bitmap that is missing or
// inconsistent fails the round with qemu-nbd's reason. The VM must stay
// shut off, its images untouched, until the round read them.
func (d *Driver) shutOffRound(ctx context.Context, src *source, p roundPlan, prev string) (runner.RoundResult, error) {
	job := src.job
	a := job.Assignment
	vmName := a.GetJob().GetSourceVm()
	bitmaps, err := src.conn.checkpointBitmaps(vmName, prev, p.targets)
	if err != nil {
		return runner.RoundResult{}, err
	}
	record := ""
	e, err := src.conn.StartBitmapExport(ctx, p.vm, bitmaps, func(e *ColdExport) error {
		cfg, err := d.config(a.GetSource(), a.GetMigrationServer(), a.GetSecrets(), job.Log)
		if err == nil {
			record, err = d.remember(cfg, a.GetMigrationServer().GetMigrationCidr(), job.Name(), e.leftoverOf())
		}
		return err
	})
	if err != nil {
		d.release(record, true)
		return runner.RoundResult{}, fmt.Errorf("read the shut-off source VM's images with the dirty bitmaps of checkpoint %s: %w", prev, err)
	}
	defer func() {
		cerr := e.Close(context.WithoutCancel(ctx))
		if cerr != nil {
			job.Log.Error("end the export of the shut-off source VM; the agent removes its sockets later", "err", cerr)
		}
		d.release(record, cerr == nil)
	}()
	var disks []runner.DiskDelta
	for _, disk := range a.GetJob().GetTarget().GetDisks() {
		dd, err := d.copyDelta(ctx, job, e, disk)
		if err != nil {
			return runner.RoundResult{}, fmt.Errorf("disk %s: %w", disk.GetSourceDisk(), err)
		}
		disks = append(disks, dd)
	}
	if err := e.Check(ctx); err != nil {
		return runner.RoundResult{}, err
	}
	return runner.RoundResult{Token: prev, Disks: disks}, nil
}

// checkpointBitmaps names the dirty bitmap the checkpoint name of the VM
// keeps in each disk of targets.
func (c *Conn) checkpointBitmaps(vmName, name string, targets []string) (map[string]string, error) {
	dom, err := c.domain(vmName)
	if err != nil {
		return nil, err
	}
	defer dom.Free()
	cp, err := dom.CheckpointLookupByName(name, 0)
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s of VM %s is gone: the last round cannot go on from it (restart the job for a new full copy): %w", name, vmName, err)
	}
	defer cp.Free()
	doc, err := checkpointDoc(cp, name)
	if err != nil {
		return nil, err
	}
	have := bitmapsOf(doc, name)
	out := map[string]string{}
	for _, t := range targets {
		if have[t] == "" {
			return nil, fmt.Errorf("checkpoint %s of VM %s keeps no dirty bitmap of disk %s", name, vmName, t)
		}
		out[t] = have[t]
	}
	return out, nil
}

func checkpointDoc(cp *libvirt.DomainCheckpoint, name string) (*libvirtxml.DomainCheckpoint, error) {
	desc, err := cp.GetXMLDesc(0)
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", name, err)
	}
	var doc libvirtxml.DomainCheckpoint
	if err := doc.Unmarshal(desc); err != nil {
		return nil, fmt.Errorf("parse checkpoint %s: %w", name, err)
	}
	return &doc, nil
}

// bitmapsOf maps each disk the checkpoint name tracks to its bitmap (by
// default named as the checkpoint).
func bitmapsOf(doc *libvirtxml.DomainCheckpoint, name string) map[string]string {
	out := map[string]string{}
	if doc.Disks == nil {
		return out
	}
	for _, d := range doc.Disks.Disks {
		if d.Checkpoint != "bitmap" {
			continue
		}
		out[d.Name] = d.Bitmap
		if d.Bitmap == "" {
			out[d.Name] = name
		}
	}
	return out
}

// removeBitmapsOffline removes the dirty bitmaps of checkpoint name from
// the images of the shut-off VM dom with `qemu-img bitmap --remove` on the
// source host (a bitmap already gone is skipped); the caller then deletes
// the checkpoint's metadata. qemu-img needs write access to the images:
// root, as the warm rounds' backups need.
func (c *Conn) removeBitmapsOffline(ctx context.Context, dom *libvirt.Domain, cp *libvirt.DomainCheckpoint, name string, log *slog.Logger) error {
	doc, err := checkpointDoc(cp, name)
	if err != nil {
		return err
	}
	desc, err := dom.GetXMLDesc(libvirt.DOMAIN_XML_INACTIVE)
	if err != nil {
		return fmt.Errorf("definition of the VM: %w", err)
	}
	vm, err := parseDomain(desc)
	if err != nil {
		return err
	}
	var errs []error
	for target, bitmap := range bitmapsOf(doc, name) {
		var disk *Disk
		for i := range vm.Disks {
			if vm.Disks[i].Target == target {
				disk = &vm.Disks[i]
			}
		}
		if disk == nil || !strings.HasPrefix(disk.Path, "/") {
			errs = append(errs, fmt.Errorf("checkpoint %s: disk %s is no longer a file or block device of VM %s", name, target, vm.Name))
			continue
		}
		if err := c.removeBitmap(ctx, disk.Path, bitmap); err != nil {
			errs = append(errs, fmt.Errorf("checkpoint %s, disk %s: %w", name, target, err))
			continue
		}
		log.Info("dirty bitmap removed from the shut-off VM's image", "vm", vm.Name, "disk", target, "bitmap", bitmap)
	}
	return errors.Join(errs...)
}

// removeBitmap removes bitmap from the qcow2 image at path unless it is
// not there.
func (c *Conn) removeBitmap(ctx context.Context, path, bitmap string) error {
	out, err := runRemote(ctx, c.ssh, "qemu-img info -U -f qcow2 --output=json "+shellQuote(path))
	if err != nil {
		return err
	}
	var info struct {
		FormatSpecific struct {
			Data struct {
				Bitmaps []struct {
					Name string `json:"name"`
				} `json:"bitmaps"`
			} `json:"data"`
		} `json:"format-specific"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		return fmt.Errorf("parse qemu-img info of %s: %w", path, err)
	}
	for _, b := range info.FormatSpecific.Data.Bitmaps {
		if b.Name == bitmap {
			_, err := runRemote(ctx, c.ssh, "qemu-img bitmap -f qcow2 --remove "+shellQuote(path)+" "+shellQuote(bitmap))
			return err
		}
	}
	return nil
}

// startAgain starts the source VM a failed cutover shut down. A VM still
// running when the cutover failed during its wait for the guest may still
// be shutting down as asked: it is waited for (up to the guest shutdown
// timeout) and started once off; one that is still running then never
// stopped.
func startAgain(ctx context.Context, job *runner.Job, dom *libvirt.Domain) error {
	state, _, err := dom.GetState()
	if err != nil {
		return fmt.Errorf("state of the source VM after a failed cutover: %w", err)
	}
	if state != libvirt.DOMAIN_SHUTOFF {
		job.Log.Info("the source VM still runs after the failed cutover; waiting for the guest shutdown it was asked for",
			"state", stateName(state))
		off, err := waitShutOff(ctx, dom, shutdownTimeout(job))
		if err != nil {
			return err
		}
		if !off {
			job.Log.Warn("the source VM's guest did not shut down; it keeps running")
			return nil
		}
	}
	if err := dom.Create(); err != nil {
		return fmt.Errorf("start the source VM again after a failed cutover: %w", err)
	}
	job.Log.Info("source VM started again: the cutover did not finish")
	return nil
}
