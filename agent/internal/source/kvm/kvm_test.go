package kvm

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/ferry-v2v/ferry/pkg/kvmver"
	"github.com/ferry-v2v/ferry/pkg/seal"
)

const domainXML = `<domain type='kvm'>
  <name>web1</name>
  <uuid>0f6c8b4e-2a1d-4c7e-9d35-6a0f1c2b3d4e</uuid>
  <metadata>
    <libosinfo:libosinfo xmlns:libosinfo="http://libosinfo.org/xmlns/libvirt/domain/1.0">
      <libosinfo:os id="http://ubuntu.com/ubuntu/22.04"/>
    </libosinfo:libosinfo>
  </metadata>
  <memory unit='GiB'>2</memory>
  <vcpu placement='static' current='2'>4</vcpu>
  <os firmware='efi'>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <loader readonly='yes' secure='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.ms.fd</loader>
    <nvram template='/usr/share/OVMF/OVMF_VARS_4M.ms.fd'>/var/lib/libvirt/qemu/nvram/web1_VARS.fd</nvram>
  </os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/web1.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>
      <source protocol='rbd' name='pool/web1-data'/>
      <target dev='sda' bus='scsi'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw'/>
      <source dev='/dev/vg0/web1-logs'/>
      <target dev='vdb' bus='virtio'/>
      <readonly/>
    </disk>
    <disk type='file' device='cdrom'><target dev='sdb' bus='sata'/><readonly/></disk>
    <disk type='file' device='cdrom'><target dev='sdc' bus='sata'/><readonly/></disk>
    <interface type='network'>
      <mac address='52:54:00:AA:BB:CC'/>
      <source network='default' bridge='virbr0'/>
      <model type='virtio'/>
    </interface>
    <interface type='bridge'>
      <mac address='52:54:00:11:22:33'/>
      <source bridge='br-prod'/>
      <model type='e1000'/>
    </interface>
  </devices>
</domain>`

func TestParseDomain(t *testing.T) {
	vm, err := parseDomain(domainXML)
	if err != nil {
		t.Fatal(err)
	}
	if vm.Name != "web1" || vm.UUID != "0f6c8b4e-2a1d-4c7e-9d35-6a0f1c2b3d4e" {
		t.Errorf("name, uuid = %q, %q", vm.Name, vm.UUID)
	}
	if vm.VCPUs != 2 || vm.MemoryBytes != 2<<30 || vm.CDROMs != 2 {
		t.Errorf("vcpus %d memory %d cdroms %d; want 2, 2 GiB, 2", vm.VCPUs, vm.MemoryBytes, vm.CDROMs)
	}
	if vm.OSType != OSLinux || vm.OSName != "http://ubuntu.com/ubuntu/22.04" {
		t.Errorf("os = %q %q", vm.OSType, vm.OSName)
	}
	wantFW := Firmware{Type: FirmwareUEFI, Loader: "/usr/share/OVMF/OVMF_CODE_4M.ms.fd",
		NVRAM: "/var/lib/libvirt/qemu/nvram/web1_VARS.fd", NVRAMTemplate: "/usr/share/OVMF/OVMF_VARS_4M.ms.fd",
		SecureBoot: true}
	if vm.Firmware != wantFW {
		t.Errorf("firmware = %+v; want %+v", vm.Firmware, wantFW)
	}
	wantDisks := []Disk{
		{Target: "vda", Path: "/var/lib/libvirt/images/web1.qcow2", Format: "qcow2", Bus: "virtio"},
		{Target: "sda", Path: "rbd:pool/web1-data", Format: "raw", Bus: "scsi"},
		{Target: "vdb", Path: "/dev/vg0/web1-logs", Format: "raw", Bus: "virtio", ReadOnly: true},
	}
	if len(vm.Disks) != len(wantDisks) {
		t.Fatalf("disks = %+v", vm.Disks)
	}
	for i, d := range vm.Disks {
		if d != wantDisks[i] {
			t.Errorf("disk %d = %+v; want %+v", i, d, wantDisks[i])
		}
	}
	wantNICs := []NIC{
		{MAC: "52:54:00:aa:bb:cc", Type: "network", Network: "default", Bridge: "virbr0", Model: "virtio"},
		{MAC: "52:54:00:11:22:33", Type: "bridge", Bridge: "br-prod", Model: "e1000"},
	}
	if !reflect.DeepEqual(vm.NICs, wantNICs) {
		t.Errorf("nics = %+v; want %+v", vm.NICs, wantNICs)
	}
}

func TestParseDomainBIOS(t *testing.T) {
	vm, err := parseDomain(`<domain type='qemu'><name>a</name><memory>65536</memory><vcpu>1</vcpu>
		<os><type>hvm</type></os></domain>`)
	if err != nil {
		t.Fatal(err)
	}
	if vm.Firmware.Type != FirmwareBIOS || vm.MemoryBytes != 64<<20 || vm.VCPUs != 1 || vm.OSType != "" {
		t.Errorf("vm = %+v", vm)
	}
	if _, err := parseDomain("<domain"); err == nil {
		t.Error("broken XML parsed")
	}
}

func TestMemoryBytes(t *testing.T) {
	tests := []struct {
		value uint64
		unit  string
		want  int64
	}{
		{1024, "", 1 << 20}, {1024, "KiB", 1 << 20}, {1, "k", 1 << 10}, {1, "KB", 1000},
		{64, "MiB", 64 << 20}, {1, "MB", 1000000}, {2, "G", 2 << 30}, {1, "TiB", 1 << 40}, {7, "bytes", 7},
	}
	for _, tt := range tests {
		if got, err := memoryBytes(tt.value, tt.unit); err != nil || got != tt.want {
			t.Errorf("memoryBytes(%d, %q) = %d, %v; want %d", tt.value, tt.unit, got, err, tt.want)
		}
	}
	if _, err := memoryBytes(1, "parsecs"); err == nil {
		t.Error("unknown unit accepted")
	}
}

func TestOSType(t *testing.T) {
	tests := map[string]string{
		"":                                "",
		"http://libosinfo.org/unknown":    "",
		"http://microsoft.com/win/2k22":   OSWindows,
		"http://redhat.com/rhel/9.2":      OSLinux,
		"http://debian.org/debian/12":     OSLinux,
		"http://freebsd.org/freebsd/13.2": "",
		"http://libosinfo.org/linux/2022": OSLinux,
	}
	for id, want := range tests {
		if got := osType(id); got != want {
			t.Errorf("osType(%q) = %q; want %q", id, got, want)
		}
	}
}

func TestCheckVersions(t *testing.T) {
	tests := []struct {
		lib, qemu Version
		ceph      string
		want      string // substring of the error, "" for none
	}{
		{ver(9, 0, 0), ver(7, 2, 0), "the target primary storage is Ceph", ""},
		{ver(1, 2, 9), ver(1, 1, 0), "", ""},
		{ver(1, 2, 8), ver(2, 0, 0), "", "libvirt 1.2.8 found, 1.2.9 or newer needed"},
		{ver(1, 2, 15), ver(2, 0, 0), "source disk vdb is the RBD image pool/data",
			"libvirt 1.2.15 found, 1.2.16 or newer needed with Ceph storage (source disk vdb is the RBD image pool/data)"},
		{ver(1, 2, 15), ver(2, 0, 0), "", ""},
		{ver(2, 0, 0), ver(1, 0, 9), "", "QEMU 1.0.9 found, 1.1.0 or newer needed"},
	}
	for _, tt := range tests {
		err := checkVersions(tt.lib, tt.qemu, tt.ceph)
		if tt.want == "" {
			if err != nil {
				t.Errorf("checkVersions(%s, %s, %q) = %v", tt.lib, tt.qemu, tt.ceph, err)
			}
			continue
		}
		if !errors.Is(err, ErrVersion) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("checkVersions(%s, %s, %q) = %v; want %q", tt.lib, tt.qemu, tt.ceph, err, tt.want)
		}
	}
	if err := checkBackupVersions(ver(5, 10, 0), ver(7, 2, 0)); !errors.Is(err, ErrVersion) ||
		!strings.Contains(err.Error(), "found libvirt 5.10.0") {
		t.Errorf("checkBackupVersions(5.10.0) = %v", err)
	}
	if v := versionOf(9000000); v != (ver(9, 0, 0)) {
		t.Errorf("versionOf(9000000) = %v", v)
	}
	if v := versionOf(7002022); v.String() != "7.2.22" {
		t.Errorf("versionOf(7002022) = %v", v)
	}
}

func TestValidate(t *testing.T) {
	good := Config{Address: "10.0.0.5", Password: "pw"}
	if err := good.withDefaults().Validate(); err != nil {
		t.Fatalf("Validate(good) = %v", err)
	}
	tests := []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"no address", func(c *Config) { c.Address = "" }, "address"},
		{"port", func(c *Config) { c.Port = 70000 }, "port"},
		{"no secret", func(c *Config) { c.Password = "" }, "password or a private key"},
		{"pinned key", func(c *Config) { c.PinnedHostKey = "nonsense" }, "pinned host key"},
		{"known key", func(c *Config) { c.KnownHostKey = "ssh-ed25519 !!!" }, "known host key"},
		{"scratch dir", func(c *Config) { c.ScratchDir = "relative" }, "scratch directory"},
		{"socket dir", func(c *Config) { c.SocketDir = "/tmp/it's" }, "socket directory"},
	}
	for _, tt := range tests {
		c := good.withDefaults()
		tt.edit(&c)
		err := c.Validate()
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: Validate = %v; want %q", tt.name, err, tt.want)
		}
	}
}

func TestSecretsNotInConfigOutput(t *testing.T) {
	c := Config{Address: "h", Password: seal.Secret("hunter2"), PrivateKeyPEM: "KEYDATA", SASLPassword: "saslpw"}
	out := strings.Join([]string{fmt.Sprintf("%v", c), fmt.Sprintf("%+v", c), fmt.Sprintf("%#v", c)}, "\n")
	for _, secret := range []string{"hunter2", "KEYDATA", "saslpw"} {
		if strings.Contains(out, secret) {
			t.Errorf("formatted Config shows %s: %s", secret, out)
		}
	}
}

func newKey(t *testing.T) ssh.PublicKey {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func authorized(k ssh.PublicKey) string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
}

func TestHostKeyCheck(t *testing.T) {
	server, other := newKey(t), newKey(t)
	tests := []struct {
		name          string
		pinned, known string
		want          string // substring of the error, "" for success
	}{
		{"tofu", "", "", ""},
		{"pinned match", authorized(server), "", ""},
		{"pinned mismatch", authorized(other), "", "the pinned host key is " + ssh.FingerprintSHA256(other)},
		{"known match", "", authorized(server), ""},
		{"known mismatch", "", authorized(other), "the recorded host key is " + ssh.FingerprintSHA256(other)},
		{"pinned wins over known", authorized(server), authorized(other), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Config{Address: "192.0.2.7", PinnedHostKey: tt.pinned, KnownHostKey: tt.known}.withDefaults()
			h, err := newHostKeyCheck(cfg)
			if err != nil {
				t.Fatal(err)
			}
			err = h.callback("192.0.2.7:22", nil, server)
			if h.observedKey() != authorized(server) {
				t.Errorf("observed = %q; want the server's key", h.observedKey())
			}
			if tt.want == "" {
				if err != nil {
					t.Errorf("callback = %v", err)
				}
				return
			}
			if !errors.Is(err, ErrHostKeyMismatch) || !strings.Contains(err.Error(), tt.want) ||
				!strings.Contains(err.Error(), "192.0.2.7:22 presented "+ssh.FingerprintSHA256(server)) {
				t.Errorf("callback = %v; want a mismatch naming the source and both fingerprints", err)
			}
		})
	}
}

func TestBackupXML(t *testing.T) {
	var def libvirtxml.Domain
	if err := def.Unmarshal(domainXML); err != nil {
		t.Fatal(err)
	}
	if _, err := backupTargets(&def, []string{"vdz"}); err == nil || !strings.Contains(err.Error(), "vda, sda, vdb") {
		t.Errorf("backupTargets(vdz) = %v; want an error listing the disks", err)
	}
	all, err := backupTargets(&def, nil)
	if err != nil || strings.Join(all, ",") != "vda,sda,vdb" {
		t.Errorf("backupTargets(all) = %v, %v", all, err)
	}
	b := &Backup{targets: []string{"vda"}, socket: "/var/lib/libvirt/qemu/ferry-backup-u-1.sock",
		scratch: []string{"/var/lib/libvirt/images/ferry-backup-u-1-vda.qcow2"}}
	doc, err := b.backupXML(&def, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`<domainbackup mode="pull">`,
		`<server transport="unix" socket="/var/lib/libvirt/qemu/ferry-backup-u-1.sock">`,
		`<disk type="file" name="vda" backup="yes">`,
		`<scratch file="/var/lib/libvirt/images/ferry-backup-u-1-vda.qcow2">`,
		`<disk name="sda" backup="no">`, `<disk name="sdb" backup="no">`,
	} {
		if !strings.Contains(doc, want) {
			t.Errorf("backup XML lacks %s:\n%s", want, doc)
		}
	}
}

func TestShellQuote(t *testing.T) {
	if got := shellQuote(`/a b/it's`); got != `'/a b/it'\''s'` {
		t.Errorf("shellQuote = %s", got)
	}
}

func TestSASLAuth(t *testing.T) {
	c := &Conn{cfg: Config{SASLUser: "migrator", SASLPassword: "s3cret"}, log: slog.New(slog.DiscardHandler)}
	auth := c.saslAuth()
	creds := []*libvirt.ConnectCredential{{Type: libvirt.CRED_AUTHNAME}, {Type: libvirt.CRED_PASSPHRASE}}
	auth.Callback(creds)
	if creds[0].Result != "migrator" || creds[0].ResultLen != 8 || creds[1].Result != "s3cret" || creds[1].ResultLen != 6 {
		t.Errorf("SASL answers = %+v, %+v", *creds[0], *creds[1])
	}
}

func ver(major, minor, micro uint32) Version {
	return Version{Major: major, Minor: minor, Micro: micro}
}

// The guest agent's (or the leases') interfaces land on the NICs with
// their MACs, whatever the case; the loopback and unknown MACs on none.
func TestSetGuestAddresses(t *testing.T) {
	nics := []NIC{{MAC: "52:54:00:aa:bb:cc"}, {MAC: "52:54:00:11:22:33"}}
	setGuestAddresses(nics, []libvirt.DomainInterface{
		{Name: "lo", Hwaddr: "00:00:00:00:00:00", Addrs: []libvirt.DomainIPAddress{{Addr: "127.0.0.1", Prefix: 8}}},
		{Name: "eth0", Hwaddr: "52:54:00:AA:BB:CC", Addrs: []libvirt.DomainIPAddress{{Addr: "10.1.2.3", Prefix: 24}, {Type: libvirt.IP_ADDR_TYPE_IPV6, Addr: "fe80::1", Prefix: 64}}},
		{Name: "eth9", Hwaddr: "52:54:00:99:99:99", Addrs: []libvirt.DomainIPAddress{{Addr: "10.9.9.9", Prefix: 24}}},
	})
	if !reflect.DeepEqual(nics[0].IPs, []string{"10.1.2.3", "fe80::1"}) || nics[1].IPs != nil {
		t.Errorf("NICs = %+v", nics)
	}
}

// TestCopyMethod: the agent chooses as the pre-checks do, from its own
// state names; a state libvirt reports beyond running, paused and shut off
// is taken as running.
func TestCopyMethod(t *testing.T) {
	for _, tt := range []struct {
		lib, qemu Version
		state     string
		want      kvmver.Method
		err       error
	}{
		{ver(9, 0, 0), ver(7, 2, 0), StateRunning, kvmver.MethodBackup, nil},
		{ver(9, 0, 0), ver(7, 2, 0), StatePaused, kvmver.MethodBackup, nil},
		{ver(9, 0, 0), ver(7, 2, 0), StateShutOff, kvmver.MethodCold, nil},
		{ver(5, 10, 0), ver(4, 1, 0), StateShutOff, kvmver.MethodCold, nil},
		{ver(5, 10, 0), ver(4, 1, 0), StateRunning, kvmver.MethodSnapshot, nil},
		{ver(5, 10, 0), ver(4, 1, 0), "state 5", kvmver.MethodSnapshot, nil},
		{ver(9, 0, 0), ver(7, 2, 0), "state 5", kvmver.MethodBackup, nil},
		{ver(1, 2, 8), ver(7, 2, 0), StateShutOff, kvmver.MethodRefused, ErrVersion},
	} {
		c := copyMethod(tt.lib, tt.qemu, tt.state)
		if err := c.Error(); c.Method != tt.want || !errors.Is(err, tt.err) || (err == nil) != (tt.err == nil) {
			t.Errorf("copyMethod(%s, %s, %q) = %v, %v; want %v, %v", tt.lib, tt.qemu, tt.state, c.Method, err, tt.want, tt.err)
		}
	}
}
