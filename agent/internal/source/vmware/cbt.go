package vmware

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// CBTConsentOption is the option that lets a warm job turn changed-block
// tracking on for a VM that has it off. It is named in ErrCBTOff's
// message, so it must be the option's name as operators set it.
const CBTConsentOption = "options.enable_cbt"

// FirstChangeID asks QueryChangedDiskAreas for every allocated area of a
// disk: a full round.
const FirstChangeID = "*"

var (
	// ErrCBTOff reports a VM without changed-block tracking, for a warm job
	// without the operator's consent to turn it on.
	ErrCBTOff = errors.New("changed-block tracking is off")
	// ErrCBT reports changed-block tracking that cannot be used: not
	// supported, or a disk whose changes the source cannot tell.
	ErrCBT = errors.New("changed-block tracking")
)

// Area is a byte range of a disk.
type Area struct{ Offset, Length int64 }

// End is the offset past the area.
func (a Area) End() int64 { return a.Offset + a.Length }

// EnsureCBT checks that vm tracks changed blocks. When it does not, it
// turns tracking on if consent is given (vSphere starts tracking at the
// VM's next stun, which the first round's snapshot is), and otherwise
// fails with ErrCBTOff naming CBTConsentOption. enabled tells whether it
// turned tracking on.
func (c *Conn) EnsureCBT(ctx context.Context, vm *VM, consent bool, log *slog.Logger) (enabled bool, err error) {
	var m mo.VirtualMachine
	if err := property.DefaultCollector(c.vim).RetrieveOne(ctx, vm.Ref,
		[]string{"config.changeTrackingEnabled", "capability.changeTrackingSupported"}, &m); err != nil {
		return false, fmt.Errorf("changed-block tracking of %s: %w", vm.Name, err)
	}
	if m.Config != nil && m.Config.ChangeTrackingEnabled != nil && *m.Config.ChangeTrackingEnabled {
		vm.CBT = true
		return false, nil
	}
	if !m.Capability.ChangeTrackingSupported {
		return false, fmt.Errorf("%w: VM %s does not support changed-block tracking (its virtual hardware or disks); "+
			"a warm migration needs it: migrate it cold", ErrCBT, vm.Name)
	}
	if !consent {
		return false, fmt.Errorf("%w on VM %s: a warm migration reads only the blocks that changed between rounds; "+
			"set %s on the job to let Ferry turn it on (ctkEnabled; the VM keeps running), or turn it on in vSphere first",
			ErrCBTOff, vm.Name, CBTConsentOption)
	}
	task, err := object.NewVirtualMachine(c.vim, vm.Ref).Reconfigure(ctx,
		types.VirtualMachineConfigSpec{ChangeTrackingEnabled: types.NewBool(true)})
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		return false, fmt.Errorf("%w: turn changed-block tracking on for %s: %w", ErrCBT, vm.Name, err)
	}
	vm.CBT = true
	log.Info("changed-block tracking turned on, as the job consented", "vm", vm.Name)
	return true, nil
}

// ChangedAreas asks the source which areas of disk key, as snapshot snap
// holds it, changed since changeID (FirstChangeID: every allocated area),
// up to capacity. vSphere may answer a part of the disk at a time; the
// parts are asked in turn. The areas come in disk order.
func (c *Conn) ChangedAreas(ctx context.Context, vm *VM, snap types.ManagedObjectReference, key int32, capacity int64,
	changeID string) ([]Area, error) {
	var out []Area
	for off := int64(0); off < capacity; {
		res, err := methods.QueryChangedDiskAreas(ctx, c.vim, &types.QueryChangedDiskAreas{
			This: vm.Ref, Snapshot: &snap, DeviceKey: key, StartOffset: off, ChangeId: changeID})
		if err != nil {
			return nil, fmt.Errorf("%w: changed areas of disk %d of %s since %q from byte %d: %w",
				ErrCBT, key, vm.Name, changeID, off, err)
		}
		info := res.Returnval
		next := info.StartOffset + info.Length
		if info.Length <= 0 || next <= off {
			return nil, fmt.Errorf("%w: the source answered an empty range (%d+%d) for the changed areas of disk %d of %s from byte %d",
				ErrCBT, info.StartOffset, info.Length, key, vm.Name, off)
		}
		for _, e := range info.ChangedArea {
			a := Area{Offset: e.Start, Length: min(e.Length, capacity-e.Start)}
			if a.Offset < 0 || a.Length <= 0 || len(out) > 0 && a.Offset < out[len(out)-1].End() {
				return nil, fmt.Errorf("%w: the source answered an area %d+%d of disk %d of %s out of order or outside the disk",
					ErrCBT, e.Start, e.Length, key, vm.Name)
			}
			out = append(out, a)
		}
		off = next
	}
	return out, nil
}

// alignAreas widens areas to whole granules (the last one may end at
// size) and merges those that then touch.
func alignAreas(areas []Area, granule, size int64) []Area {
	var out []Area
	for _, a := range areas {
		lo := a.Offset / granule * granule
		hi := min(size, (a.End()+granule-1)/granule*granule)
		if n := len(out); n > 0 && lo <= out[n-1].End() {
			out[n-1].Length = max(out[n-1].End(), hi) - out[n-1].Offset
			continue
		}
		out = append(out, Area{Offset: lo, Length: hi - lo})
	}
	return out
}

func sumAreas(areas []Area) int64 {
	var n int64
	for _, a := range areas {
		n += a.Length
	}
	return n
}
