package vcsimtest

import (
	"fmt"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// The snapshot guard: a snapshot of a VM that has one already is refused
// with an InvalidState fault naming the one in the way. The simulator
// cannot take it: it would find the current snapshot's wrapper
// (exportingSnapshot) where it expects its own type and panic, taking the
// whole test binary down. A driver that leaves a snapshot behind (one a
// killed agent took, say) so fails the round that follows, saying why.
// Sessions take snapshots through their view of the VM (cbtVM, installed
// by cbt.handler), which refuses.

// snapshotInTheWay is the fault for a snapshot of vm, nil when vm has
// none.
func snapshotInTheWay(vm *simulator.VirtualMachine) *soap.Fault {
	if vm.Snapshot == nil || vm.Snapshot.CurrentSnapshot == nil {
		return nil
	}
	cur := *vm.Snapshot.CurrentSnapshot
	name := cur.Value
	var walk func([]types.VirtualMachineSnapshotTree)
	walk = func(ts []types.VirtualMachineSnapshotTree) {
		for _, t := range ts {
			if t.Snapshot == cur {
				name = t.Name
			}
			walk(t.ChildSnapshotList)
		}
	}
	walk(vm.Snapshot.RootSnapshotList)
	return simulator.Fault(fmt.Sprintf("vcsimtest: VM %s has snapshot %q already; the simulator takes no snapshot on top of another",
		vm.Name, name), &types.InvalidState{})
}

func (v *cbtVM) CreateSnapshotTask(ctx *simulator.Context, req *types.CreateSnapshot_Task) soap.HasFault {
	if f := snapshotInTheWay(v.VirtualMachine); f != nil {
		return &methods.CreateSnapshot_TaskBody{Fault_: f}
	}
	return v.VirtualMachine.CreateSnapshotTask(ctx, req)
}

func (v *cbtVM) CreateSnapshotExTask(ctx *simulator.Context, req *types.CreateSnapshotEx_Task) soap.HasFault {
	if f := snapshotInTheWay(v.VirtualMachine); f != nil {
		return &methods.CreateSnapshotEx_TaskBody{Fault_: f}
	}
	return v.VirtualMachine.CreateSnapshotExTask(ctx, req)
}
