package target

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// libvirtEnv is a connection to the real libvirtd and a libvirt network
// made for the test, with DHCP on 10.77.<n>.0/24.
type libvirtEnv struct {
	lv      *testenv.Libvirt
	conn    *libvirt.Connect
	network string
	subnet  string // "10.77.<n>."
	storage *ferryv1.PrimaryStorage
}

func newLibvirtEnv(t *testing.T) *libvirtEnv {
	t.Helper()
	lv := testenv.RequireLibvirt(t)
	requireTools(t, "qemu-img")
	conn, err := libvirt.NewConnect(lv.URI)
	if err != nil {
		t.Fatalf("connect %s: %v", lv.URI, err)
	}
	t.Cleanup(func() { conn.Close() })
	var e *libvirtEnv
	var id string
	// A subnet another network holds (another test's, or one a killed
	// run left behind) makes the start fail: try another.
	for attempt := 0; ; attempt++ {
		id = randHex(3)
		e = &libvirtEnv{lv: lv, conn: conn, network: "ferrytest-" + id}
		octet, err := strconv.ParseUint(id[:2], 16, 8)
		if err != nil {
			t.Fatal(err)
		}
		e.subnet = fmt.Sprintf("10.77.%d.", octet)
		n, err := conn.NetworkDefineXML(fmt.Sprintf(`<network><name>%s</name><bridge name='vbrft%s'/>
<ip address='%s1' netmask='255.255.255.0'><dhcp><range start='%s10' end='%s200'/></dhcp></ip></network>`,
			e.network, id, e.subnet, e.subnet, e.subnet))
		if err != nil {
			t.Fatalf("define network: %v", err)
		}
		err = n.Create()
		if err == nil {
			t.Cleanup(func() { _ = n.Destroy(); _ = n.Undefine(); n.Free() })
			break
		}
		_ = n.Undefine()
		n.Free()
		if attempt == 9 {
			t.Fatalf("start network: %v", err)
		}
	}
	dir := filepath.Join(testenv.ImagesDir, "ferrytest-"+id)
	t.Cleanup(func() { os.RemoveAll(dir) })
	e.storage = storage(ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_LOCAL, dir, "", "")
	return e
}

// spec is a VM of two disks (created for real), two NICs with addresses
// on the test network (the first keeping its source MAC) and two CD-ROMs.
func (e *libvirtEnv) spec(t *testing.T) Spec {
	t.Helper()
	name := "ferrytest-" + randHex(4)
	job := "migrationJobs/" + name
	s := Spec{
		JobID: job,
		VM: &ferryv1.TargetVm{
			VmName: name, Cpus: 2, MemoryBytes: 96 << 20, CdromCount: 2, OsType: ferryv1.OsType_OS_TYPE_LINUX,
			Disks: []*ferryv1.TargetDisk{
				{SourceDisk: "vda", DisplayName: "root", SizeBytes: 16 << 20},
				{SourceDisk: "vdb", DisplayName: "data", SizeBytes: 8 << 20},
			},
			Nics: []*ferryv1.TargetNic{
				{SourceMac: "52:54:00:" + colonHex(3), L3Network: "l3Networks/test", Ip: e.subnet + "50"},
				{SourceMac: "52:54:00:" + colonHex(3), Mac: "52:54:00:" + colonHex(3), L3Network: "l3Networks/test", Ip: e.subnet + "51"},
			},
		},
		Networks:  []*ferryv1.L3Network{{Name: "l3Networks/test", LibvirtNetwork: e.network}},
		AutoStart: true,
	}
	for _, d := range s.VM.Disks {
		v, err := NameVolume(e.storage, job, d.SourceDisk, d.SizeBytes)
		if err != nil {
			t.Fatal(err)
		}
		if err := v.Create(context.Background(), ExecCommander{}); err != nil {
			t.Fatal(err)
		}
		s.Volumes = append(s.Volumes, v)
	}
	return s
}

func colonHex(n int) string {
	h := randHex(n)
	var parts []string
	for i := 0; i < len(h); i += 2 {
		parts = append(parts, h[i:i+2])
	}
	return strings.Join(parts, ":")
}

// domain returns the domain's XML, parsed, and its state.
func (e *libvirtEnv) domain(t *testing.T, name string) (*libvirtxml.Domain, libvirt.DomainState) {
	t.Helper()
	d, err := e.conn.LookupDomainByName(name)
	if err != nil {
		t.Fatalf("look up %s: %v", name, err)
	}
	defer d.Free()
	desc, err := d.GetXMLDesc(0)
	if err != nil {
		t.Fatal(err)
	}
	var x libvirtxml.Domain
	if err := x.Unmarshal(desc); err != nil {
		t.Fatal(err)
	}
	state, _, err := d.GetState()
	if err != nil {
		t.Fatal(err)
	}
	return &x, state
}

// dhcpHostsOf lists the network's DHCP host entries as "mac ip name".
func (e *libvirtEnv) dhcpHostsOf(t *testing.T) []string {
	t.Helper()
	n, err := e.conn.LookupNetworkByName(e.network)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Free()
	hosts, _, err := networkHosts(n)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, h := range hosts {
		out = append(out, h.MAC+" "+h.IP+" "+h.Name)
	}
	return out
}

// opts are Define's options for tests: TCG, whatever the host offers (a
// nested KVM may stop OVMF with an internal error).
func (e *libvirtEnv) opts(t *testing.T) Options {
	return Options{DomainType: "qemu", Log: testkit.Logger(t)}
}

// rollbackAtEnd makes sure nothing of the spec outlives a failed test.
func (e *libvirtEnv) rollbackAtEnd(t *testing.T, s Spec) {
	t.Cleanup(func() { _ = Rollback(context.Background(), e.conn, s, e.opts(t)) })
}

func TestDefineStartRollback(t *testing.T) {
	e := newLibvirtEnv(t)
	for _, uefi := range []bool{false, true} {
		t.Run(map[bool]string{false: "BIOS", true: "UEFI"}[uefi], func(t *testing.T) {
			s := e.spec(t)
			e.rollbackAtEnd(t, s)
			if uefi {
				fw := chooseUEFI(DefaultFirmwareDir, 0)
				if fw.Code == "" {
					testenv.Unavailable(t, "no OVMF firmware in %s (apt-get install ovmf)", DefaultFirmwareDir)
				}
				vars, err := os.ReadFile(fw.VarsTemplate)
				if err != nil {
					t.Fatal(err)
				}
				copy(vars[len(vars)-8:], "ferry-nv") // the source's own store
				s.VM.Firmware, s.NVRAM, s.AutoStart = ferryv1.Firmware_FIRMWARE_UEFI, vars, false
			}
			d, err := Define(context.Background(), e.conn, s, e.opts(t))
			if err != nil {
				t.Fatal(err)
			}
			checkDomain(t, e, s, d, uefi)
			if uefi {
				if err := startByName(e.conn, d.Name); err != nil {
					t.Fatalf("start UEFI domain: %v", err)
				}
			}
			if _, state := e.domain(t, d.Name); state != libvirt.DOMAIN_RUNNING {
				t.Errorf("state = %d, want running", state)
			}
			for range 2 {
				if err := d.Rollback(context.Background()); err != nil {
					t.Fatalf("Rollback: %v", err)
				}
			}
			checkGone(t, e, s)
		})
	}
}

func startByName(conn *libvirt.Connect, name string) error {
	d, err := conn.LookupDomainByName(name)
	if err != nil {
		return err
	}
	defer d.Free()
	return d.Create()
}

// checkDomain compares the defined domain with the spec field by field.
func checkDomain(t *testing.T, e *libvirtEnv, s Spec, d *Defined, uefi bool) {
	t.Helper()
	x, _ := e.domain(t, s.VM.VmName)
	if x.UUID != d.UUID || x.VCPU.Value != 2 || x.Memory.Value != 96<<10 || x.Memory.Unit != "KiB" {
		t.Errorf("uuid %s/%s vcpus %d memory %d %s", x.UUID, d.UUID, x.VCPU.Value, x.Memory.Value, x.Memory.Unit)
	}
	if x.Type != "qemu" {
		t.Errorf("type %s, want qemu", x.Type)
	}
	var disks, cdroms [][3]string
	for _, disk := range x.Devices.Disks {
		switch disk.Device {
		case "disk":
			disks = append(disks, [3]string{disk.Target.Dev, disk.Target.Bus, disk.Source.File.File})
		case "cdrom":
			src := ""
			if disk.Source != nil && disk.Source.File != nil {
				src = disk.Source.File.File
			}
			cdroms = append(cdroms, [3]string{disk.Target.Dev, disk.Target.Bus, src})
		}
	}
	wantDisks := [][3]string{{"sda", "scsi", s.Volumes[0].Path}, {"sdb", "scsi", s.Volumes[1].Path}}
	if !reflect.DeepEqual(disks, wantDisks) {
		t.Errorf("disks = %v, want %v", disks, wantDisks)
	}
	if !reflect.DeepEqual(cdroms, [][3]string{{"hda", "ide", ""}, {"hdb", "ide", ""}}) {
		t.Errorf("cdroms = %v, want 2 empty", cdroms)
	}
	if len(x.Devices.Controllers) == 0 || !hasController(x, "scsi", "virtio-scsi") {
		t.Error("no virtio-scsi controller")
	}
	m, ok, err := ParseMetadata(x.Metadata.XML)
	if err != nil || !ok || m.Job != s.JobID || len(m.Disks) != 2 ||
		m.Disks[0] != (MetadataDisk{"sda", "vda", "root"}) || m.Disks[1] != (MetadataDisk{"sdb", "vdb", "data"}) {
		t.Errorf("metadata = %+v (%v, %v) in %s", m, ok, err, x.Metadata.XML)
	}
	wantMACs := []string{s.VM.Nics[0].SourceMac, s.VM.Nics[1].Mac}
	for i, nic := range x.Devices.Interfaces {
		if nic.MAC.Address != wantMACs[i] || nic.Source.Network == nil || nic.Source.Network.Network != e.network || nic.Model.Type != "virtio" {
			t.Errorf("nic %d = mac %s source %+v", i, nic.MAC.Address, nic.Source.Network)
		}
	}
	if len(x.Devices.Interfaces) != 2 {
		t.Errorf("%d NICs", len(x.Devices.Interfaces))
	}
	wantHosts := []string{wantMACs[0] + " " + e.subnet + "50 " + s.VM.VmName, wantMACs[1] + " " + e.subnet + "51 "}
	if got := e.dhcpHostsOf(t); !reflect.DeepEqual(got, wantHosts) {
		t.Errorf("DHCP hosts = %q, want %q", got, wantHosts)
	}
	checkFirmware(t, x, s, uefi)
}

func hasController(x *libvirtxml.Domain, typ, model string) bool {
	for _, c := range x.Devices.Controllers {
		if c.Type == typ && c.Model == model {
			return true
		}
	}
	return false
}

func checkFirmware(t *testing.T, x *libvirtxml.Domain, s Spec, uefi bool) {
	t.Helper()
	if !uefi {
		if x.OS.Loader != nil || x.OS.NVRam != nil {
			t.Errorf("BIOS VM has loader %+v", x.OS.Loader)
		}
		return
	}
	nv := filepath.Join(DefaultNVRAMDir, s.VM.VmName+"_VARS.fd")
	if x.OS.Loader == nil || x.OS.Loader.Type != "pflash" || x.OS.NVRam == nil || x.OS.NVRam.NVRam != nv {
		t.Fatalf("UEFI os: loader %+v nvram %+v", x.OS.Loader, x.OS.NVRam)
	}
	if got, err := os.ReadFile(nv); err != nil || !bytes.Equal(got, s.NVRAM) {
		t.Errorf("NVRAM file %s differs from the source's (%v)", nv, err)
	}
}

// checkGone asserts Rollback left no domain, DHCP entry, volume or NVRAM.
func checkGone(t *testing.T, e *libvirtEnv, s Spec) {
	t.Helper()
	if _, err := e.conn.LookupDomainByName(s.VM.VmName); !isCode(err, libvirt.ERR_NO_DOMAIN) {
		t.Errorf("domain still there: %v", err)
	}
	if hosts := e.dhcpHostsOf(t); len(hosts) != 0 {
		t.Errorf("DHCP hosts left: %q", hosts)
	}
	for _, v := range s.Volumes {
		if _, err := os.Stat(v.Path); !os.IsNotExist(err) {
			t.Errorf("volume %s left: %v", v.Path, err)
		}
	}
	if _, err := os.Stat(filepath.Join(DefaultNVRAMDir, s.VM.VmName+"_VARS.fd")); !os.IsNotExist(err) {
		t.Errorf("NVRAM left: %v", err)
	}
}

// A VM larger than the host (1 TiB of memory) is defined, not started,
// and the job gets a warning instead of an error.
func TestDefineWithoutResources(t *testing.T) {
	e := newLibvirtEnv(t)
	s := e.spec(t)
	s.VM.MemoryBytes = 1 << 40
	e.rollbackAtEnd(t, s)
	d, err := Define(context.Background(), e.conn, s, e.opts(t))
	if err != nil {
		t.Fatal(err)
	}
	if d.Started || len(d.Warnings) != 1 || !strings.Contains(d.Warnings[0], "lacks the resources") {
		t.Errorf("started %v, warnings %q", d.Started, d.Warnings)
	}
	t.Logf("warning: %s", d.Warnings)
	if x, state := e.domain(t, d.Name); state != libvirt.DOMAIN_SHUTOFF || x.Memory.Value != 1<<30 {
		t.Errorf("state %d memory %d KiB, want shut off and 1 TiB", state, x.Memory.Value)
	}
	if err := d.Rollback(context.Background()); err != nil {
		t.Fatal(err)
	}
	checkGone(t, e, s)
}

// A domain of the same name that Ferry did not define is refused and left
// alone by Rollback; this job's own leftover is replaced.
func TestDefineDomainOwnership(t *testing.T) {
	e := newLibvirtEnv(t)
	s := e.spec(t)
	s.AutoStart = false
	e.rollbackAtEnd(t, s)
	foreign := fmt.Sprintf(`<domain type='qemu'><name>%s</name><memory unit='MiB'>32</memory>
<os><type arch='x86_64'>hvm</type></os></domain>`, s.VM.VmName)
	fd, err := e.conn.DomainDefineXML(foreign)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Define(context.Background(), e.conn, s, e.opts(t)); !errors.Is(err, ErrDomainExists) {
		t.Errorf("Define over a foreign domain = %v, want ErrDomainExists", err)
	}
	if err := Rollback(context.Background(), e.conn, s, e.opts(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := e.conn.LookupDomainByName(s.VM.VmName); err != nil {
		t.Errorf("Rollback removed a foreign domain: %v", err)
	}
	if err := fd.Undefine(); err != nil {
		t.Fatal(err)
	}
	fd.Free()

	s = e.spec(t) // volumes again, Rollback deleted them
	s.AutoStart = false
	e.rollbackAtEnd(t, s)
	first, err := Define(context.Background(), e.conn, s, e.opts(t))
	if err != nil {
		t.Fatal(err)
	}
	second, err := Define(context.Background(), e.conn, s, e.opts(t))
	if err != nil {
		t.Fatalf("Define over the job's own leftover: %v", err)
	}
	if first.UUID == second.UUID {
		t.Error("the leftover was not replaced")
	}
	if hosts := e.dhcpHostsOf(t); len(hosts) != 2 {
		t.Errorf("DHCP hosts after a second Define: %q", hosts)
	}
}

// The domain type follows what the host's libvirt offers.
func TestDomainType(t *testing.T) {
	e := newLibvirtEnv(t)
	got, err := domainType(e.conn, "")
	if err != nil {
		t.Fatal(err)
	}
	caps := e.lv.Virsh(t, "capabilities")
	if want := map[bool]string{true: "kvm", false: "qemu"}[strings.Contains(caps, "<domain type='kvm'")]; got != want {
		t.Errorf("domainType = %s, want %s", got, want)
	}
	if _, err := os.Stat("/dev/kvm"); err != nil && got != "qemu" {
		t.Errorf("no /dev/kvm but type %s", got)
	}
	if got, _ := domainType(e.conn, "qemu"); got != "qemu" {
		t.Errorf("explicit type ignored: %s", got)
	}
}

// A Define that fails half-way (a DHCP reservation conflicts) removes the
// domain it defined and keeps the other reservation and the volumes.
func TestDefineUndoesOnFailure(t *testing.T) {
	e := newLibvirtEnv(t)
	s := e.spec(t)
	e.rollbackAtEnd(t, s)
	other := dhcpHost{network: e.network, mac: "52:54:00:00:00:01", ip: s.VM.Nics[1].Ip, name: "other"}
	if err := addDHCPHost(e.conn, other); err != nil {
		t.Fatal(err)
	}
	_, err := Define(context.Background(), e.conn, s, e.opts(t))
	if !errors.Is(err, ErrDHCPConflict) {
		t.Fatalf("Define = %v, want ErrDHCPConflict", err)
	}
	if _, err := e.conn.LookupDomainByName(s.VM.VmName); !isCode(err, libvirt.ERR_NO_DOMAIN) {
		t.Errorf("domain left after a failed Define: %v", err)
	}
	want := []string{"52:54:00:00:00:01 " + s.VM.Nics[1].Ip + " other"}
	if got := e.dhcpHostsOf(t); !reflect.DeepEqual(got, want) {
		t.Errorf("DHCP hosts = %q, want only %q", got, want)
	}
	for _, v := range s.Volumes {
		if _, err := os.Stat(v.Path); err != nil {
			t.Errorf("volume %s removed by Define: %v", v.Path, err)
		}
	}
}

// Windows targets get what their guest can drive: plain Windows SATA
// disks and e1000 NICs, Windows with virtio drivers virtio-scsi and
// virtio NICs, both a local-time clock; a SATA Linux VM starts too.
// Bridge NICs are left to unit tests (a bridge needs a host interface).
func TestDefineOtherBuses(t *testing.T) {
	e := newLibvirtEnv(t)
	tests := []struct {
		name       string
		os         ferryv1.OsType
		source     *ferryv1.SourceVm
		bus        ferryv1.DiskBus
		wantDisks  [][2]string
		controller bool // a virtio-scsi controller
		nicModel   string
		clock      string
	}{
		{"windows", ferryv1.OsType_OS_TYPE_WINDOWS, nil, 0, [][2]string{{"sda", "sata"}, {"sdb", "sata"}}, false, "e1000", "localtime"},
		{"windows from the source's guest id", 0, &ferryv1.SourceVm{GuestOsId: "windows2019srv_64Guest"}, 0,
			[][2]string{{"sda", "sata"}, {"sdb", "sata"}}, false, "e1000", "localtime"},
		{"windows-virtio", ferryv1.OsType_OS_TYPE_WINDOWS_VIRTIO, nil, 0, [][2]string{{"sda", "scsi"}, {"sdb", "scsi"}}, true, "virtio", "localtime"},
		{"sata", ferryv1.OsType_OS_TYPE_LINUX, nil, ferryv1.DiskBus_DISK_BUS_SATA, [][2]string{{"sda", "sata"}, {"sdb", "sata"}}, false, "virtio", "utc"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := e.spec(t)
			s.VM.OsType, s.VM.DiskBus, s.VM.CdromCount, s.Source = tt.os, tt.bus, 3, tt.source
			e.rollbackAtEnd(t, s)
			d, err := Define(context.Background(), e.conn, s, e.opts(t))
			if err != nil {
				t.Fatal(err)
			}
			x, state := e.domain(t, d.Name)
			if state != libvirt.DOMAIN_RUNNING {
				t.Errorf("state %d, want running", state)
			}
			if got := diskTargets(x, "disk"); !reflect.DeepEqual(got, tt.wantDisks) {
				t.Errorf("disks = %v, want %v", got, tt.wantDisks)
			}
			for i, disk := range x.Devices.Disks[:2] {
				if disk.Source == nil || disk.Source.File == nil || disk.Source.File.File != s.Volumes[i].Path {
					t.Errorf("disk %d source = %+v, want %s", i, disk.Source, s.Volumes[i].Path)
				}
			}
			if got := hasController(x, "scsi", "virtio-scsi"); got != tt.controller {
				t.Errorf("virtio-scsi controller = %v, want %v", got, tt.controller)
			}
			if n := len(diskTargets(x, "cdrom")); n != 3 {
				t.Errorf("%d cdroms, want 3", n)
			}
			if len(x.Devices.Interfaces) != 2 {
				t.Fatalf("%d NICs, want 2", len(x.Devices.Interfaces))
			}
			wantMACs := []string{s.VM.Nics[0].SourceMac, s.VM.Nics[1].Mac}
			for i, nic := range x.Devices.Interfaces {
				if nic.Model == nil || nic.Model.Type != tt.nicModel {
					t.Errorf("nic %d model = %+v, want %s", i, nic.Model, tt.nicModel)
				}
				if nic.MAC == nil || nic.MAC.Address != wantMACs[i] {
					t.Errorf("nic %d MAC = %+v, want %s", i, nic.MAC, wantMACs[i])
				}
				if nic.Source == nil || nic.Source.Network == nil || nic.Source.Network.Network != e.network {
					t.Errorf("nic %d source = %+v, want network %s", i, nic.Source, e.network)
				}
			}
			if x.Clock == nil || x.Clock.Offset != tt.clock {
				t.Errorf("clock = %+v, want offset %s", x.Clock, tt.clock)
			}
			if err := d.Rollback(context.Background()); err != nil {
				t.Fatal(err)
			}
			checkGone(t, e, s)
		})
	}
}

// TestDefineDeferredStart: with DeferStart, Define leaves the domain shut
// off whatever AutoStart says, and StartDefined starts it; StartDefined
// refuses a domain of the same name that another job (or no job) defined.
func TestDefineDeferredStart(t *testing.T) {
	e := newLibvirtEnv(t)
	s := e.spec(t)
	s.AutoStart, s.DeferStart = true, true
	e.rollbackAtEnd(t, s)
	d, err := Define(context.Background(), e.conn, s, e.opts(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, state := e.domain(t, d.Name); state != libvirt.DOMAIN_SHUTOFF || d.Started {
		t.Errorf("after Define with DeferStart: state %d, started %v; want shut off", state, d.Started)
	}
	other := s
	other.JobID = "migrationJobs/someone-else"
	if _, err := StartDefined(context.Background(), e.conn, other, e.opts(t)); !errors.Is(err, ErrDomainExists) {
		t.Errorf("StartDefined of another job's domain = %v, want ErrDomainExists", err)
	}
	started, err := StartDefined(context.Background(), e.conn, s, e.opts(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, state := e.domain(t, d.Name); state != libvirt.DOMAIN_RUNNING || !started.Started || started.UUID != d.UUID {
		t.Errorf("after StartDefined: state %d, started %v, uuid %s (defined %s); want the same domain running",
			state, started.Started, started.UUID, d.UUID)
	}
}
