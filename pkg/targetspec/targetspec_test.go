package targetspec

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

func windowsVM() *ferryv1.SourceVm {
	return &ferryv1.SourceVm{
		Id: "vm-42", Name: "sql/01", Cpus: 4, MemoryBytes: 8 << 30, Firmware: ferryv1.Firmware_FIRMWARE_UEFI, CdromCount: 5,
		GuestOsId: "windows2019srvNext_64Guest",
		Disks:     []*ferryv1.SourceDisk{{Target: "2000", CapacityBytes: 40 << 30, Bus: "scsi"}, {Target: "2001", CapacityBytes: 10 << 30, Bus: "scsi"}},
		Nics: []*ferryv1.SourceNic{
			{Mac: "00:50:56:aa:00:01", Portgroup: "VM Network", IpAddresses: []string{"fe80::1", "10.0.0.7", "192.168.5.20"}},
			{Mac: "00:50:56:aa:00:02", Portgroup: "DSwitch-Backup", Network: "DSwitch-Backup", IpAddresses: []string{"172.16.0.9/24"}},
		},
	}
}

var group = &ferryv1.NetworkMappingGroup{Name: "networkMappingGroups/dc1", Mappings: []*ferryv1.NetworkMapping{
	{SourceNetwork: "VM Network", L3Network: "l3Networks/prod"},
	{SourceNetwork: "DSwitch-Backup", L3Network: "l3Networks/backup"},
}}

var networks = []*ferryv1.L3Network{
	{Name: "l3Networks/prod", IpRangeStart: "192.168.5.10", IpRangeEnd: "192.168.5.99"},
	{Name: "l3Networks/backup", IpRangeStart: "172.16.0.2", IpRangeEnd: "172.16.0.200"},
}

func TestFillFromAWindowsVM(t *testing.T) {
	spec := &ferryv1.MigrationJobSpec{SourceVm: "vm-42", Options: &ferryv1.MigrationOptions{UseSourceNicAddress: true},
		Target: &ferryv1.TargetVm{Cluster: "clusters/c1", PrimaryStorage: "primaryStorages/ps1"}}
	if !Incomplete(spec) {
		t.Fatal("a spec without name, sizes, disks and NICs is complete")
	}
	if notes, err := Fill(spec, windowsVM(), Options{Group: group, Networks: networks}); err != nil || notes != nil {
		t.Fatal(notes, err)
	}
	want := &ferryv1.TargetVm{
		VmName: "sql-01", Cluster: "clusters/c1", PrimaryStorage: "primaryStorages/ps1", Cpus: 4, MemoryBytes: 8 << 30,
		Firmware: ferryv1.Firmware_FIRMWARE_UEFI, OsType: ferryv1.OsType_OS_TYPE_WINDOWS, DiskBus: ferryv1.DiskBus_DISK_BUS_SATA,
		CdromCount: 3,
		Disks: []*ferryv1.TargetDisk{{SourceDisk: "2000", DisplayName: "root", SizeBytes: 40 << 30},
			{SourceDisk: "2001", DisplayName: "data-2001", SizeBytes: 10 << 30}},
		Nics: []*ferryv1.TargetNic{
			{SourceMac: "00:50:56:aa:00:01", L3Network: "l3Networks/prod", Mac: "00:50:56:aa:00:01", Ip: "192.168.5.20"},
			{SourceMac: "00:50:56:aa:00:02", L3Network: "l3Networks/backup", Mac: "00:50:56:aa:00:02", Ip: "172.16.0.9"},
		},
	}
	if !proto.Equal(spec.Target, want) {
		t.Fatalf("filled target\n got %v\nwant %v", spec.Target, want)
	}
}

func TestFillKeepsWhatIsSet(t *testing.T) {
	set := &ferryv1.TargetVm{VmName: "new", Cpus: 1, MemoryBytes: 1 << 30, Firmware: ferryv1.Firmware_FIRMWARE_BIOS,
		OsType: ferryv1.OsType_OS_TYPE_WINDOWS_VIRTIO, CdromCount: 1,
		Disks: []*ferryv1.TargetDisk{{SourceDisk: "2001", SizeBytes: 10 << 30}},
		Nics:  []*ferryv1.TargetNic{{SourceMac: "00:50:56:aa:00:01", L3Network: "l3Networks/other", Mac: "52:54:00:00:00:01"}}}
	spec := &ferryv1.MigrationJobSpec{Target: proto.Clone(set).(*ferryv1.TargetVm)}
	if Incomplete(spec) {
		t.Fatal("a full spec is incomplete")
	}
	if _, err := Fill(spec, windowsVM(), Options{Group: group}); err != nil {
		t.Fatal(err)
	}
	set.DiskBus = ferryv1.DiskBus_DISK_BUS_VIRTIO_SCSI // the only thing left to fill: virtio for WindowsVirtio
	if !proto.Equal(spec.Target, set) {
		t.Fatalf("filled target\n got %v\nwant %v", spec.Target, set)
	}
}

func TestOSTypeOfGuestID(t *testing.T) {
	for id, want := range map[string]ferryv1.OsType{
		"ubuntu64Guest": ferryv1.OsType_OS_TYPE_LINUX, "rhel9_64Guest": ferryv1.OsType_OS_TYPE_LINUX,
		"other5xLinux64Guest": ferryv1.OsType_OS_TYPE_LINUX, "http://ubuntu.com/ubuntu/22.04": ferryv1.OsType_OS_TYPE_LINUX,
		"windows2019srv_64Guest": ferryv1.OsType_OS_TYPE_WINDOWS, "windows9_64Guest": ferryv1.OsType_OS_TYPE_WINDOWS,
		"http://microsoft.com/win/10": ferryv1.OsType_OS_TYPE_WINDOWS, "otherGuest": ferryv1.OsType_OS_TYPE_UNSPECIFIED,
		"freebsd13_64Guest": ferryv1.OsType_OS_TYPE_UNSPECIFIED, "": ferryv1.OsType_OS_TYPE_UNSPECIFIED,
	} {
		if got := OSTypeOfGuestID(id); got != want {
			t.Errorf("OSTypeOfGuestID(%s) = %s, want %s", id, got, want)
		}
	}
}

func TestPlatform(t *testing.T) {
	for id, want := range map[string]ferryv1.OsType{
		"windows9Server64Guest":       ferryv1.OsType_OS_TYPE_WINDOWS,
		"winNetStandardGuest":         ferryv1.OsType_OS_TYPE_WINDOWS,
		"http://microsoft.com/win/10": ferryv1.OsType_OS_TYPE_WINDOWS,
		"rhel9_64Guest":               ferryv1.OsType_OS_TYPE_LINUX,
		"otherGuest64":                ferryv1.OsType_OS_TYPE_LINUX,
		"":                            ferryv1.OsType_OS_TYPE_LINUX,
	} {
		if got := Platform(&ferryv1.SourceVm{GuestOsId: id}); got != want {
			t.Errorf("Platform(%q) = %s, want %s", id, got, want)
		}
	}
	if got := Platform(&ferryv1.SourceVm{GuestOsId: "windows9_64Guest", OsType: ferryv1.OsType_OS_TYPE_WINDOWS_VIRTIO}); got != ferryv1.OsType_OS_TYPE_WINDOWS_VIRTIO {
		t.Errorf("the source's own os_type lost to its guest id: %s", got)
	}
	for os, want := range map[ferryv1.OsType]ferryv1.DiskBus{
		ferryv1.OsType_OS_TYPE_LINUX:          ferryv1.DiskBus_DISK_BUS_VIRTIO_SCSI,
		ferryv1.OsType_OS_TYPE_WINDOWS:        ferryv1.DiskBus_DISK_BUS_SATA,
		ferryv1.OsType_OS_TYPE_WINDOWS_VIRTIO: ferryv1.DiskBus_DISK_BUS_VIRTIO_SCSI,
	} {
		if got := DiskBus(os); got != want {
			t.Errorf("DiskBus(%s) = %s, want %s", os, got, want)
		}
	}
}

func TestFillErrors(t *testing.T) {
	tests := []struct {
		name  string
		vm    func(*ferryv1.SourceVm)
		opts  Options
		field string
		want  string
	}{
		{"portgroup not mapped", func(vm *ferryv1.SourceVm) { vm.Nics[1].Portgroup, vm.Nics[1].Network = "Lab", "" },
			Options{Group: group}, "target.nics[1].l3_network", "source NIC 00:50:56:aa:00:02 is on Lab, which networkMappingGroups/dc1 does not map"},
		{"no group, no network", func(*ferryv1.SourceVm) {}, Options{}, "target.nics[0].l3_network", "name a network-mapping group"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vm := windowsVM()
			tt.vm(vm)
			spec := &ferryv1.MigrationJobSpec{Options: &ferryv1.MigrationOptions{UseSourceNicAddress: true}}
			_, err := Fill(spec, vm, tt.opts)
			e, ok := err.(*Error)
			if !ok || e.Field != tt.field || !strings.Contains(e.Reason, tt.want) {
				t.Fatalf("Fill: %v, want %s: ...%s...", err, tt.field, tt.want)
			}
		})
	}
}

// A NIC whose source address is unknown, or outside the L3 network's
// range, keeps its source MAC and no ip: the coordinator allocates one
// from the range, and the note says so. The other NIC keeps its address.
func TestFillLeavesUnusableSourceAddressesToAllocation(t *testing.T) {
	tests := []struct {
		name string
		ips  []string
		note string
	}{
		{"no guest address", nil, "target.nics[0].ip: source NIC 00:50:56:aa:00:01 reports no guest address (no VMware Tools or QEMU guest agent running, no DHCP lease); " +
			"an address from the range of l3Networks/prod is allocated instead (options.use_source_nic_address)"},
		{"only link-local", []string{"fe80::1"}, "target.nics[0].ip: source NIC 00:50:56:aa:00:01 reports no guest address"},
		{"outside the range", []string{"10.9.9.9"}, "target.nics[0].ip: source NIC 00:50:56:aa:00:01 has 10.9.9.9, none inside the range 192.168.5.10-192.168.5.99 of l3Networks/prod; " +
			"an address from the range of l3Networks/prod is allocated instead (options.use_source_nic_address)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vm := windowsVM()
			vm.Nics[0].IpAddresses = tt.ips
			spec := &ferryv1.MigrationJobSpec{Options: &ferryv1.MigrationOptions{UseSourceNicAddress: true}}
			notes, err := Fill(spec, vm, Options{Group: group, Networks: networks})
			if err != nil {
				t.Fatal(err)
			}
			if len(notes) != 1 || !strings.HasPrefix(notes[0], tt.note) {
				t.Fatalf("notes = %q, want one starting %q", notes, tt.note)
			}
			n0, n1 := spec.Target.Nics[0], spec.Target.Nics[1]
			if n0.Mac != "00:50:56:aa:00:01" || n0.Ip != "" || n1.Mac != "00:50:56:aa:00:02" || n1.Ip != "172.16.0.9" {
				t.Fatalf("nics = %v", spec.Target.Nics)
			}
		})
	}
}
