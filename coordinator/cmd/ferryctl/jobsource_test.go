package main

import (
	"testing"

	"google.golang.org/protobuf/proto"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

func TestFillTarget(t *testing.T) {
	vm := &ferryv1.SourceVm{
		Name: "web-1", Cpus: 2, MemoryBytes: 4 << 30, Firmware: ferryv1.Firmware_FIRMWARE_UEFI, CdromCount: 5,
		OsType: ferryv1.OsType_OS_TYPE_LINUX,
		Disks:  []*ferryv1.SourceDisk{{Target: "vda", CapacityBytes: 20 << 30}, {Target: "vdb", CapacityBytes: 100 << 30}},
		Nics:   []*ferryv1.SourceNic{{Mac: "52:54:00:00:00:01"}, {Mac: "52:54:00:00:00:02"}},
	}
	got := &ferryv1.TargetVm{VmName: "web-1", Cpus: 4} // a flag given wins
	fillTarget(got, vm, "l3Networks/lan")
	want := &ferryv1.TargetVm{
		VmName: "web-1", Cpus: 4, MemoryBytes: 4 << 30, Firmware: ferryv1.Firmware_FIRMWARE_UEFI, CdromCount: 3,
		OsType: ferryv1.OsType_OS_TYPE_LINUX,
		Disks: []*ferryv1.TargetDisk{
			{SourceDisk: "vda", DisplayName: "root", SizeBytes: 20 << 30},
			{SourceDisk: "vdb", DisplayName: "data-vdb", SizeBytes: 100 << 30},
		},
		Nics: []*ferryv1.TargetNic{
			{SourceMac: "52:54:00:00:00:01", L3Network: "l3Networks/lan"},
			{SourceMac: "52:54:00:00:00:02", L3Network: "l3Networks/lan"},
		},
	}
	if !proto.Equal(got, want) {
		t.Fatalf("got %v\nwant %v", got, want)
	}
}
