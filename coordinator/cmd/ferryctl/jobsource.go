package main

import (
	"context"
	"fmt"

	"github.com/ferry-v2v/ferry/pkg/client"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// fillFromSource completes a one-VM request with what the source says of
// the VM: fields the flags set are kept.
func fillFromSource(ctx context.Context, cl *client.Client, req *ferryv1.CreateMigrationJobsRequest, network string) error {
	spec := req.GetJobs()[0]
	vms, err := listAllSourceVMs(ctx, cl, &ferryv1.ListSourceVMsRequest{Source: req.GetSource(),
		MigrationServer: req.GetMigrationServer(), Refresh: true})
	if err != nil {
		return err
	}
	var vm *ferryv1.SourceVm
	for _, v := range vms {
		if v.GetId() == spec.GetSourceVm() || v.GetName() == spec.GetSourceVm() || v.GetUuid() == spec.GetSourceVm() {
			vm = v
		}
	}
	if vm == nil {
		return fmt.Errorf("source %s has no running or paused VM %q; 'ferryctl source vms %s' lists them",
			req.GetSource(), spec.GetSourceVm(), req.GetSource())
	}
	fillTarget(spec.GetTarget(), vm, network)
	return nil
}

func fillTarget(t *ferryv1.TargetVm, vm *ferryv1.SourceVm, network string) {
	if t.GetCpus() == 0 {
		t.Cpus = vm.GetCpus()
	}
	if t.GetMemoryBytes() == 0 {
		t.MemoryBytes = vm.GetMemoryBytes()
	}
	if t.GetFirmware() == ferryv1.Firmware_FIRMWARE_UNSPECIFIED {
		t.Firmware = vm.GetFirmware()
	}
	if t.GetOsType() == ferryv1.OsType_OS_TYPE_UNSPECIFIED {
		t.OsType = vm.GetOsType()
	}
	if t.GetCdromCount() == 0 {
		t.CdromCount = min(vm.GetCdromCount(), 3)
	}
	if len(t.GetDisks()) == 0 {
		for i, d := range vm.GetDisks() {
			name := "data-" + d.GetTarget()
			if i == 0 {
				name = "root"
			}
			t.Disks = append(t.Disks, &ferryv1.TargetDisk{SourceDisk: d.GetTarget(), DisplayName: name, SizeBytes: d.GetCapacityBytes()})
		}
	}
	if len(t.GetNics()) == 0 {
		for _, n := range vm.GetNics() {
			t.Nics = append(t.Nics, &ferryv1.TargetNic{SourceMac: n.GetMac(), L3Network: network})
		}
	}
}
