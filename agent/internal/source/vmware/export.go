package vmware

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/vmware/govmomi/nfc"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// releaseTimeout bounds releasing a lease and removing a snapshot after
// the job's context has ended.
const releaseTimeout = 2 * time.Minute

// Export is an NFC export lease of a snapshot the driver took of a VM.
// Release ends both, on every path.
type Export struct {
	conn  *Conn
	vm    *VM
	snap  types.ManagedObjectReference
	lease *nfc.Lease
	info  *nfc.LeaseInfo
	log   *slog.Logger
}

// StartExport removes snapshots an earlier run left, takes a snapshot
// named name (no memory, not quiesced: the VM is off) and opens an export
// lease of it.
func (c *Conn) StartExport(ctx context.Context, vm *VM, name string, log *slog.Logger) (*Export, error) {
	obj := object.NewVirtualMachine(c.vim, vm.Ref)
	if err := c.removeStaleSnapshots(ctx, vm); err != nil {
		return nil, err
	}
	task, err := obj.CreateSnapshot(ctx, name, "Ferry migration export; removed when the export ends", false, false)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", vm.Name, err)
	}
	res, err := task.WaitForResult(ctx)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", vm.Name, err)
	}
	snap, ok := res.Result.(types.ManagedObjectReference)
	if !ok {
		return nil, fmt.Errorf("snapshot %s: the task returned %T, not a snapshot", vm.Name, res.Result)
	}
	e := &Export{conn: c, vm: vm, snap: snap, log: log}
	log.Info("snapshot taken", "snapshot", snap.Value, "name", name)
	resp, err := methods.ExportSnapshot(ctx, c.vim, &types.ExportSnapshot{This: snap})
	if err != nil {
		e.removeSnapshot()
		return nil, fmt.Errorf("%w: export snapshot of %s: %w", ErrExport, vm.Name, err)
	}
	e.lease = nfc.NewLease(c.vim, resp.Returnval)
	if e.info, err = e.lease.Wait(ctx, nil); err != nil {
		e.Release(err)
		return nil, fmt.Errorf("%w: lease of %s: %w", ErrExport, vm.Name, err)
	}
	log.Info("export lease ready", "lease", e.lease.Value, "timeout_seconds", e.info.LeaseTimeout, "urls", len(e.info.DeviceUrl))
	return e, nil
}

// removeStaleSnapshots removes the snapshots of vm whose names start with
// SnapshotPrefix: left by a run that could not clean up.
func (c *Conn) removeStaleSnapshots(ctx context.Context, vm *VM) error {
	var m mo.VirtualMachine
	if err := property.DefaultCollector(c.vim).RetrieveOne(ctx, vm.Ref, []string{"snapshot"}, &m); err != nil {
		return fmt.Errorf("snapshots of %s: %w", vm.Name, err)
	}
	if m.Snapshot == nil {
		return nil
	}
	var stale []types.VirtualMachineSnapshotTree
	var walk func([]types.VirtualMachineSnapshotTree)
	walk = func(ts []types.VirtualMachineSnapshotTree) {
		for _, t := range ts {
			if strings.HasPrefix(t.Name, SnapshotPrefix) {
				stale = append(stale, t)
			}
			walk(t.ChildSnapshotList)
		}
	}
	walk(m.Snapshot.RootSnapshotList)
	for _, t := range stale {
		c.log.Info("removing a snapshot an earlier export left", "vm", vm.Name, "snapshot", t.Name)
		if err := c.removeSnapshot(ctx, t.Snapshot); err != nil {
			return fmt.Errorf("remove snapshot %q of %s: %w", t.Name, vm.Name, err)
		}
	}
	return nil
}

func (c *Conn) removeSnapshot(ctx context.Context, snap types.ManagedObjectReference) error {
	res, err := methods.RemoveSnapshot_Task(ctx, c.vim, &types.RemoveSnapshot_Task{
		This: snap, RemoveChildren: false, Consolidate: types.NewBool(true)})
	if err != nil {
		return err
	}
	return object.NewTask(c.vim, res.Returnval).Wait(ctx)
}

// Timeout is how long the lease lives without a progress update.
func (e *Export) Timeout() time.Duration { return time.Duration(e.info.LeaseTimeout) * time.Second }

// UpdateInterval is how often the lease is told the progress: configured,
// or a fifth of the lease's timeout, from a second to a minute.
func (e *Export) UpdateInterval() time.Duration {
	if iv := e.conn.cfg.LeaseUpdateInterval; iv > 0 {
		return iv
	}
	return min(max(e.Timeout()/5, time.Second), time.Minute)
}

// Release completes the lease when cause is nil, aborts it with cause
// otherwise, then removes the snapshot. Failures are logged: the export's
// outcome is already decided.
func (e *Export) Release(cause error) {
	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	if cause == nil {
		if err := e.lease.Progress(ctx, 100); err != nil {
			e.log.Warn("final export lease progress", "err", err)
		}
		if err := e.lease.Complete(ctx); err != nil {
			e.log.Error("complete the export lease", "lease", e.lease.Value, "err", err)
		} else {
			e.log.Info("export lease completed", "lease", e.lease.Value)
		}
	} else {
		if err := e.abort(ctx, cause); err != nil {
			e.log.Error("abort the export lease", "lease", e.lease.Value, "err", err)
		} else {
			e.log.Info("export lease aborted", "lease", e.lease.Value, "cause", cause)
		}
	}
	e.removeSnapshot()
}

// abort aborts the lease with cause as its fault.
func (e *Export) abort(ctx context.Context, cause error) error {
	fault := &types.LocalizedMethodFault{Fault: &types.SystemError{Reason: cause.Error()},
		LocalizedMessage: cause.Error()}
	return e.lease.Abort(ctx, fault)
}

func (e *Export) removeSnapshot() {
	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	if err := e.conn.removeSnapshot(ctx, e.snap); err != nil {
		e.log.Error("remove the export snapshot; the next export removes it", "snapshot", e.snap.Value, "err", err)
		return
	}
	e.log.Info("snapshot removed", "snapshot", e.snap.Value)
}

// DiskURLs maps the lease's disk URLs to disks of the VM (all of them, in
// device order). An ESXi host's thumbprint given by the lease is trusted
// for that host's URLs.
func (e *Export) DiskURLs(disks []Disk) (map[string]*url.URL, error) {
	matched, err := matchDiskURLs(e.info.DeviceUrl, disks)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrExport, err)
	}
	out := make(map[string]*url.URL, len(matched))
	for name, dev := range matched {
		u, err := e.conn.soap.ParseURL(dev.Url)
		if err != nil {
			return nil, fmt.Errorf("%w: disk URL %q: %w", ErrExport, dev.Url, err)
		}
		if dev.SslThumbprint != "" && u.Scheme == "https" {
			if err := e.conn.trust.pinHost(hostPortOf(u), dev.SslThumbprint); err != nil {
				return nil, err
			}
		}
		out[name] = u
	}
	return out, nil
}

func hostPortOf(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	if u.Scheme == "http" {
		return net.JoinHostPort(u.Hostname(), "80")
	}
	return net.JoinHostPort(u.Hostname(), "443")
}

// matchDiskURLs pairs lease URLs with disks: by the controller and unit
// that a URL's key names (/vm-42/VirtualLsiLogicController0:1), or when
// keys do not name them, by order, as the lease lists disks in device order.
func matchDiskURLs(devs []types.HttpNfcLeaseDeviceUrl, disks []Disk) (map[string]types.HttpNfcLeaseDeviceUrl, error) {
	var diskURLs []types.HttpNfcLeaseDeviceUrl
	for _, d := range devs {
		if d.Disk != nil && *d.Disk || d.Disk == nil && strings.HasSuffix(path.Base(d.Url), ".vmdk") {
			diskURLs = append(diskURLs, d)
		}
	}
	byKey := map[string]types.HttpNfcLeaseDeviceUrl{}
	for _, d := range diskURLs {
		byKey[path.Base(d.Key)] = d
	}
	out := map[string]types.HttpNfcLeaseDeviceUrl{}
	for _, disk := range disks {
		if d, ok := byKey[fmt.Sprintf("%s%d:%d", disk.Controller, disk.BusNumber, disk.Unit)]; ok {
			out[disk.Name] = d
		}
	}
	if len(out) == len(disks) {
		return out, nil
	}
	if len(diskURLs) != len(disks) {
		return nil, fmt.Errorf("the lease has %d disk URLs for %d disks", len(diskURLs), len(disks))
	}
	clear(out)
	for i, disk := range disks {
		out[disk.Name] = diskURLs[i]
	}
	return out, nil
}
