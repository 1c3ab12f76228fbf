package target

import (
	"errors"
	"reflect"
	"testing"

	"libvirt.org/go/libvirtxml"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

var testNetworks = []*ferryv1.L3Network{
	{Name: "l3Networks/lan", LibvirtNetwork: "default"},
	{Name: "l3Networks/br", Bridge: "br0"},
}

// unitSpec is a two-disk, two-NIC VM on local storage.
func unitSpec(t *testing.T) Spec {
	t.Helper()
	st := storage(ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_LOCAL, "/ps", "", "")
	var vols []Volume
	for _, d := range []string{"vda", "vdb"} {
		v, err := NameVolume(st, "migrationJobs/j1", d, 1<<30)
		if err != nil {
			t.Fatal(err)
		}
		vols = append(vols, v)
	}
	return Spec{
		JobID: "migrationJobs/j1",
		VM: &ferryv1.TargetVm{
			VmName: "web-1", Cpus: 2, MemoryBytes: 3 << 30, CdromCount: 2,
			Disks: []*ferryv1.TargetDisk{{SourceDisk: "vda", DisplayName: "root"}, {SourceDisk: "vdb", DisplayName: "data <1>"}},
			Nics: []*ferryv1.TargetNic{
				{SourceMac: "52:54:00:aa:bb:01", L3Network: "l3Networks/lan", Ip: "192.168.122.50"},
				{SourceMac: "52:54:00:aa:bb:02", Mac: "52:54:00:CC:DD:02", L3Network: "l3Networks/br"},
			},
		},
		Volumes:  vols,
		Networks: testNetworks,
	}
}

func diskTargets(d *libvirtxml.Domain, device string) (out [][2]string) {
	for _, disk := range d.Devices.Disks {
		if disk.Device == device {
			out = append(out, [2]string{disk.Target.Dev, disk.Target.Bus})
		}
	}
	return out
}

func TestBuildDomainBus(t *testing.T) {
	tests := []struct {
		name       string
		os         ferryv1.OsType
		source     *ferryv1.SourceVm
		bus        ferryv1.DiskBus
		want       [][2]string
		controller bool
		nic        string
		clock      string
	}{
		{"linux", ferryv1.OsType_OS_TYPE_LINUX, nil, 0, [][2]string{{"sda", "scsi"}, {"sdb", "scsi"}}, true, "virtio", "utc"},
		{"unspecified", 0, nil, 0, [][2]string{{"sda", "scsi"}, {"sdb", "scsi"}}, true, "virtio", "utc"},
		{"windows", ferryv1.OsType_OS_TYPE_WINDOWS, nil, 0, [][2]string{{"sda", "sata"}, {"sdb", "sata"}}, false, "e1000", "localtime"},
		{"windows from the source", 0, &ferryv1.SourceVm{OsType: ferryv1.OsType_OS_TYPE_WINDOWS}, 0,
			[][2]string{{"sda", "sata"}, {"sdb", "sata"}}, false, "e1000", "localtime"},
		{"windows from the source's guest id", 0, &ferryv1.SourceVm{GuestOsId: "http://microsoft.com/win/10"}, 0,
			[][2]string{{"sda", "sata"}, {"sdb", "sata"}}, false, "e1000", "localtime"},
		{"windows asking for virtio-scsi", ferryv1.OsType_OS_TYPE_WINDOWS, nil, ferryv1.DiskBus_DISK_BUS_VIRTIO_SCSI,
			[][2]string{{"sda", "scsi"}, {"sdb", "scsi"}}, true, "e1000", "localtime"},
		{"windows-virtio", ferryv1.OsType_OS_TYPE_WINDOWS_VIRTIO, nil, 0, [][2]string{{"sda", "scsi"}, {"sdb", "scsi"}}, true, "virtio", "localtime"},
		{"windows-virtio on virtio-blk", ferryv1.OsType_OS_TYPE_WINDOWS_VIRTIO, nil, ferryv1.DiskBus_DISK_BUS_VIRTIO_BLK,
			[][2]string{{"vda", "virtio"}, {"vdb", "virtio"}}, false, "virtio", "localtime"},
		{"sata", ferryv1.OsType_OS_TYPE_LINUX, nil, ferryv1.DiskBus_DISK_BUS_SATA, [][2]string{{"sda", "sata"}, {"sdb", "sata"}}, false, "virtio", "utc"},
		{"linux asking for virtio-blk", ferryv1.OsType_OS_TYPE_LINUX, nil, ferryv1.DiskBus_DISK_BUS_VIRTIO_BLK,
			[][2]string{{"vda", "virtio"}, {"vdb", "virtio"}}, false, "virtio", "utc"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := unitSpec(t)
			s.VM.OsType, s.VM.DiskBus, s.Source = tt.os, tt.bus, tt.source
			d, err := BuildDomain(s, BuildOptions{Type: "qemu"})
			if err != nil {
				t.Fatal(err)
			}
			if got := diskTargets(d, "disk"); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("disks = %v, want %v", got, tt.want)
			}
			hasController := len(d.Devices.Controllers) == 1 && d.Devices.Controllers[0].Model == "virtio-scsi"
			if hasController != tt.controller {
				t.Errorf("virtio-scsi controller = %v, want %v", hasController, tt.controller)
			}
			for i, n := range d.Devices.Interfaces {
				if n.Model.Type != tt.nic {
					t.Errorf("nic %d model = %s, want %s", i, n.Model.Type, tt.nic)
				}
			}
			if d.Clock.Offset != tt.clock {
				t.Errorf("clock = %s, want %s", d.Clock.Offset, tt.clock)
			}
		})
	}
}

func TestBuildDomainDevices(t *testing.T) {
	s := unitSpec(t)
	d, err := BuildDomain(s, BuildOptions{Type: "kvm"})
	if err != nil {
		t.Fatal(err)
	}
	if d.Type != "kvm" || d.Name != "web-1" || d.VCPU.Value != 2 || d.Memory.Value != 3<<20 || d.Memory.Unit != "KiB" {
		t.Errorf("type %s name %s vcpu %d memory %d %s", d.Type, d.Name, d.VCPU.Value, d.Memory.Value, d.Memory.Unit)
	}
	if d.CPU == nil || d.CPU.Mode != "host-model" {
		t.Errorf("cpu = %+v, want host-model on kvm", d.CPU)
	}
	if d.OS.Loader != nil || d.OS.Firmware != "" {
		t.Errorf("BIOS VM has firmware %+v", d.OS)
	}
	disks := d.Devices.Disks
	if disks[0].Source.File.File != "/ps/j1/vda.qcow2" || disks[1].Source.File.File != "/ps/j1/vdb.qcow2" ||
		disks[0].Driver.Type != "qcow2" || disks[0].Boot == nil || disks[0].Boot.Order != 1 || disks[1].Boot != nil {
		t.Errorf("disk sources or boot order wrong: %+v %+v", disks[0], disks[1])
	}
	if got := diskTargets(d, "cdrom"); !reflect.DeepEqual(got, [][2]string{{"hda", "ide"}, {"hdb", "ide"}}) {
		t.Errorf("cdroms = %v", got)
	}
	nics := d.Devices.Interfaces
	if len(nics) != 2 || nics[0].MAC.Address != "52:54:00:aa:bb:01" || nics[0].Source.Network.Network != "default" ||
		nics[1].MAC.Address != "52:54:00:cc:dd:02" || nics[1].Source.Bridge.Bridge != "br0" || nics[1].Model.Type != "virtio" {
		t.Errorf("interfaces wrong: %+v", nics)
	}
	if len(d.Devices.Serials) != 1 || len(d.Devices.Consoles) != 1 || d.Devices.Graphics[0].VNC == nil {
		t.Error("no serial console or VNC")
	}
	m, ok, err := ParseMetadata(d.Metadata.XML)
	want := Metadata{Job: "migrationJobs/j1", Disks: []MetadataDisk{{"sda", "vda", "root"}, {"sdb", "vdb", "data <1>"}}}
	if err != nil || !ok || !reflect.DeepEqual(m, want) {
		t.Errorf("metadata = %+v %v %v from %s", m, ok, err, d.Metadata.XML)
	}
	if hosts := s.dhcpHosts(); !reflect.DeepEqual(hosts, []dhcpHost{{"default", "52:54:00:aa:bb:01", "192.168.122.50", "web-1"}}) {
		t.Errorf("dhcp hosts = %+v", hosts)
	}
}

func TestBuildDomainStorageAndFirmware(t *testing.T) {
	s := unitSpec(t)
	ceph, _ := NameVolume(storage(ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_CEPH, "", "vms", ""), "j1", "vda", 1<<30)
	lv, _ := NameVolume(storage(ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_SHAREDBLOCK, "", "", "vg0"), "j1", "vdb", 1<<30)
	s.Volumes = []Volume{ceph, lv}
	s.VM.CdromCount = 7
	s.Source = &ferryv1.SourceVm{Firmware: ferryv1.Firmware_FIRMWARE_UEFI}
	o := BuildOptions{Type: "qemu", UEFI: Firmware{Code: "/fw/CODE.fd", VarsTemplate: "/fw/VARS.fd"}, NVRAMPath: "/nv/web-1_VARS.fd",
		CephUser: "libvirt", CephSecretUUID: "0b9a3c2e-0000-4000-8000-000000000001"}
	d, err := BuildDomain(s, o)
	if err != nil {
		t.Fatal(err)
	}
	r := d.Devices.Disks[0]
	if r.Source.Network == nil || r.Source.Network.Protocol != "rbd" || r.Source.Network.Name != "vms/ferry-j1-vda" ||
		r.Source.Network.Auth.Username != "libvirt" || r.Driver.Type != "raw" {
		t.Errorf("rbd disk = %+v", r.Source.Network)
	}
	b := d.Devices.Disks[1]
	if b.Source.Block == nil || b.Source.Block.Dev != "/dev/vg0/ferry-j1-vdb" || b.Driver.Cache != "none" || b.Driver.Type != "raw" {
		t.Errorf("block disk = %+v %+v", b.Source, b.Driver)
	}
	if n := len(diskTargets(d, "cdrom")); n != MaxCDROMs {
		t.Errorf("%d cdroms, want %d", n, MaxCDROMs)
	}
	if d.OS.Loader == nil || d.OS.Loader.Path != "/fw/CODE.fd" || d.OS.Loader.Type != "pflash" ||
		d.OS.NVRam.NVRam != "/nv/web-1_VARS.fd" || d.OS.NVRam.Template != "/fw/VARS.fd" {
		t.Errorf("UEFI os = %+v %+v", d.OS.Loader, d.OS.NVRam)
	}
	o.UEFI = Firmware{}
	if d, _ = BuildDomain(s, o); d.OS.Firmware != "efi" || d.OS.Loader != nil {
		t.Errorf("without OVMF files: os firmware %q loader %+v", d.OS.Firmware, d.OS.Loader)
	}
}

func TestBuildDomainRefuses(t *testing.T) {
	tests := []struct {
		name   string
		change func(*Spec)
	}{
		{"no name", func(s *Spec) { s.VM.VmName = "" }},
		{"slash in name", func(s *Spec) { s.VM.VmName = "a/b" }},
		{"no cpus", func(s *Spec) { s.VM.Cpus = 0 }},
		{"no memory", func(s *Spec) { s.VM.MemoryBytes = 0 }},
		{"volume missing", func(s *Spec) { s.Volumes = s.Volumes[:1] }},
		{"no NICs", func(s *Spec) { s.VM.Nics = nil }},
		{"unknown network", func(s *Spec) { s.VM.Nics[0].L3Network = "l3Networks/nope" }},
		{"bad MAC", func(s *Spec) { s.VM.Nics[1].Mac = "52:54:00" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := unitSpec(t)
			tt.change(&s)
			if _, err := BuildDomain(s, BuildOptions{Type: "qemu"}); !errors.Is(err, ErrBadSpec) {
				t.Errorf("BuildDomain = %v, want ErrBadSpec", err)
			}
		})
	}
}

func TestDeviceNameAndHostname(t *testing.T) {
	for i, want := range map[int]string{0: "sda", 1: "sdb", 25: "sdz", 26: "sdaa", 27: "sdab", 701: "sdzz", 702: "sdaaa"} {
		if got := DeviceName("sd", i); got != want {
			t.Errorf("DeviceName(sd, %d) = %s, want %s", i, got, want)
		}
	}
	for in, want := range map[string]string{"Web 1": "web-1", "db_prod.eu": "db-prod-eu", "--": "", "ÄB": "b"} {
		if got := hostname(in); got != want {
			t.Errorf("hostname(%q) = %q, want %q", in, got, want)
		}
	}
	if AutoStart(nil) != true || AutoStart(&ferryv1.MigrationOptions{}) != true {
		t.Error("auto-start is not on by default")
	}
	off := false
	if AutoStart(&ferryv1.MigrationOptions{AutoStart: &off}) {
		t.Error("auto-start off is ignored")
	}
}
