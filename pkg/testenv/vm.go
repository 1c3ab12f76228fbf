package testenv

import (
	"crypto/rand"
	"encoding/xml"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"text/template"
)

// ImagesDir is where test VMs keep their files: qemu runs as libvirt-qemu
// and must traverse the directory, which t.TempDir()'s 0700 directories
// forbid.
const ImagesDir = "/var/lib/libvirt/images"

const mib = 1 << 20

// randomPiece is the most random data one qemu-io write puts in.
const randomPiece = 1 << 30

// The known contents of a test VM's disks. The root disk (vda) holds
// RootExtents, each filled with its Pattern byte, plus RandomBytes of
// random data at RandomOffset when asked; the data disk (vdb) is mostly
// holes with DataExtents scattered over it, the last one at its very end.
const (
	RootSize     int64 = 64 * mib
	DataSize     int64 = 256 * mib
	RandomOffset int64 = 16 * mib
)

// Extent is a written range of a test disk.
type Extent struct {
	Offset, Length int64
	Pattern        byte
}

var (
	RootExtents = []Extent{{0, 4 * mib, 0x5a}, {40 * mib, mib, 0xa5}}
	DataExtents = []Extent{{mib, 64 << 10, 0x11}, {100 * mib, mib, 0x22}, {DataSize - mib/2, mib / 2, 0x33}}
)

// VMOptions configure NewTestVM; the zero value is a BIOS VM with one NIC.
type VMOptions struct {
	// Name defaults to ferry-test-<random>.
	Name string
	// UEFI boots OVMF with an NVRAM file; the test is skipped when the
	// OVMF files are missing.
	UEFI bool
	// CDROMs adds empty IDE CD-ROM drives (at most 2).
	CDROMs int
	// NICs is the number of user-mode NICs (default 1).
	NICs int
	// RandomBytes of random data go into the root disk at RandomOffset.
	RandomBytes int64
	// GuestIP (10.1.2.3/24), when set, makes the VM boot a guest that gives
	// its first NIC this address and runs a QEMU guest agent that reports
	// it (see guest.go): 256 MiB, the host's kernel, a serial console
	// logged to ConsoleLog. Not with UEFI.
	GuestIP string
	// Machine is the machine type: "q35", or "" for the default PC.
	Machine string
	// BootSector writes into disk BootDisk (0 vda, 1 vdb) a boot sector
	// that prints BootMessage of that disk on the serial port over and
	// over, and gives that disk boot order 1: the VM boots from it, and
	// its console (ConsoleLog) says so. Not with GuestIP or UEFI.
	BootSector bool
	BootDisk   int
	// Stopped defines the domain without starting it (shut off).
	Stopped bool
	// Backing makes the root disk (vda) a qcow2 overlay on a qcow2 backing
	// file (TestDisk.Backing): its first extent is written to the backing
	// file, the rest (and the random data) to the overlay.
	Backing bool
	// RawData makes the data disk (vdb) a raw file instead of qcow2.
	RawData bool
}

// TestDisk is a disk of a test VM.
type TestDisk struct {
	Target string // vda, vdb
	Path   string // qcow2 file (raw with VMOptions.RawData)
	Format string // qcow2 or raw
	Size   int64  // virtual size
	// Extents written; the rest reads as zeroes.
	Extents []Extent
	// Random, when set, is the random data at RandomOffset.
	Random []byte
	// BootOrder is the disk's <boot order>, 0 for none; a disk with one
	// starts with a BootSector.
	BootOrder int
	// Backing is the qcow2 backing file of Path, if any.
	Backing string
}

// TestVM is a running TCG domain with no OS: 64 MiB, 1 vCPU, a root and a
// data disk (virtio, qcow2) and user-mode NICs.
type TestVM struct {
	Name, UUID string
	Dir        string
	Disks      []TestDisk
	MACs       []string
	VCPUs      int
	MemoryMiB  int
	CDROMs     int
	// Loader and NVRAM are set for a UEFI VM.
	Loader, NVRAM string
	// Boot, Cmdline and ConsoleLog are set for a VM with a guest
	// (VMOptions.GuestIP).
	Boot       *guestBoot
	Cmdline    string
	ConsoleLog string
	// Machine is the domain's machine type: pc or q35.
	Machine string
	lv      *Libvirt
}

// NewTestVM creates the disks with known data, defines and starts the
// domain (only defines it with VMOptions.Stopped). When the test ends it is destroyed and undefined (with its
// NVRAM and metadata) and its files are removed.
func NewTestVM(t testing.TB, lv *Libvirt, opts VMOptions) *TestVM {
	t.Helper()
	vm := &TestVM{Name: opts.Name, VCPUs: 1, MemoryMiB: 64, CDROMs: min(opts.CDROMs, 2), Machine: "pc", lv: lv}
	if opts.Machine != "" {
		vm.Machine = opts.Machine
	}
	if vm.Name == "" {
		vm.Name = "ferry-test-" + randomHex(4)
	}
	if opts.UEFI {
		vm.Loader, vm.NVRAM = ovmf(t)
	}
	vm.Dir = filepath.Join(ImagesDir, vm.Name)
	if err := os.MkdirAll(vm.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(vm.Dir) })
	if vm.NVRAM != "" {
		vm.NVRAM = filepath.Join(vm.Dir, "VARS.fd")
	}
	vm.makeDisks(t, opts.RandomBytes, opts.Backing, opts.RawData)
	if opts.BootSector {
		d := &vm.Disks[opts.BootDisk]
		sector := filepath.Join(vm.Dir, "bootsector.bin")
		writeFile(t, sector, BootSector(BootMessage(d.Target)), 0o600)
		Run(t, "qemu-io", "-f", "qcow2", "-c", "write -q -s "+sector+" 0 512", d.Path)
		d.BootOrder = 1
		vm.ConsoleLog = filepath.Join(vm.Dir, "console.log")
	}
	if opts.GuestIP != "" {
		b := makeGuestBoot(t, vm.Dir)
		vm.Boot, vm.MemoryMiB = &b, 256
		vm.Cmdline = "console=ttyS0 panic=-1 loglevel=4 ferry.ip=" + opts.GuestIP
		vm.ConsoleLog = filepath.Join(vm.Dir, "console.log")
	}
	for i := 0; i < max(opts.NICs, 1); i++ {
		vm.MACs = append(vm.MACs, fmt.Sprintf("52:54:00:%s:%02x", colon(randomHex(2)), i))
	}
	xmlPath := filepath.Join(vm.Dir, "domain.xml")
	writeFile(t, xmlPath, []byte(vm.domainXML(t)), 0o644)
	lv.Virsh(t, "define", xmlPath)
	t.Cleanup(func() { vm.remove(t) })
	if !opts.Stopped {
		lv.Virsh(t, "start", vm.Name)
	}
	vm.UUID = lv.Virsh(t, "domuuid", vm.Name)
	return vm
}

// ovmf returns a loader and NVRAM template pair, or skips the test.
func ovmf(t testing.TB) (loader, vars string) {
	t.Helper()
	pairs := [][2]string{
		{"/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"},
		{"/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"},
	}
	for _, p := range pairs {
		_, err1 := os.Stat(p[0])
		_, err2 := os.Stat(p[1])
		if err1 == nil && err2 == nil {
			return p[0], p[1]
		}
	}
	t.Skip("no OVMF firmware (apt-get install ovmf); skipping the UEFI variant")
	return "", ""
}

// makeDisks creates vda and vdb with their known contents.
func (vm *TestVM) makeDisks(t testing.TB, randomBytes int64, backing, rawData bool) {
	t.Helper()
	root := TestDisk{Target: "vda", Path: filepath.Join(vm.Dir, "root.qcow2"), Format: "qcow2", Size: RootSize, Extents: RootExtents}
	if randomBytes > 0 {
		root.Random = make([]byte, randomBytes)
		if _, err := rand.Read(root.Random); err != nil {
			t.Fatal(err)
		}
		root.Size = max(root.Size, (RandomOffset+randomBytes+mib-1)/mib*mib)
	}
	data := TestDisk{Target: "vdb", Path: filepath.Join(vm.Dir, "data.qcow2"), Format: "qcow2", Size: DataSize, Extents: DataExtents}
	if rawData {
		data.Path, data.Format = filepath.Join(vm.Dir, "data.raw"), "raw"
	}
	if backing {
		root.Backing = filepath.Join(vm.Dir, "root-base.qcow2")
		Run(t, "qemu-img", "create", "-q", "-f", "qcow2", root.Backing, fmt.Sprint(root.Size))
		e := root.Extents[0]
		Run(t, "qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -q -P 0x%02x %d %d", e.Pattern, e.Offset, e.Length), root.Backing)
	}
	for _, d := range []TestDisk{root, data} {
		extents := d.Extents
		if d.Backing != "" {
			Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", d.Backing, "-F", "qcow2", d.Path, fmt.Sprint(d.Size))
			extents = extents[1:]
		} else {
			Run(t, "qemu-img", "create", "-q", "-f", d.Format, d.Path, fmt.Sprint(d.Size))
		}
		args := []string{"-f", d.Format}
		for _, e := range extents {
			args = append(args, "-c", fmt.Sprintf("write -q -P 0x%02x %d %d", e.Pattern, e.Offset, e.Length))
		}
		// One qemu-io write stops short of 2 GiB: the random data goes in
		// by pieces, each from a file of its own (write -s reads its
		// file from the start), removed once written.
		var pieces []string
		for off := int64(0); off < int64(len(d.Random)); off += randomPiece {
			piece := d.Random[off:min(off+randomPiece, int64(len(d.Random)))]
			src := filepath.Join(vm.Dir, fmt.Sprintf("random-%d.bin", len(pieces)))
			writeFile(t, src, piece, 0o600)
			pieces = append(pieces, src)
			args = append(args, "-c", fmt.Sprintf("write -q -s %s %d %d", src, RandomOffset+off, len(piece)))
		}
		if len(args) > 2 {
			Run(t, "qemu-io", append(args, d.Path)...)
		}
		for _, p := range pieces {
			os.Remove(p)
		}
	}
	vm.Disks = []TestDisk{root, data}
}

var domainTemplate = template.Must(template.New("domain").Funcs(template.FuncMap{"x": xmlText}).Parse(`
<domain type='qemu'>
  <name>{{x .Name}}</name>
  <memory unit='MiB'>{{.MemoryMiB}}</memory>
  <vcpu>{{.VCPUs}}</vcpu>
  <os>
    <type arch='x86_64' machine='{{x .Machine}}'>hvm</type>
{{- if .Loader}}
    <loader readonly='yes' type='pflash'>{{x .Loader}}</loader>
    <nvram template='{{x .Template}}'>{{x .NVRAM}}</nvram>
{{- end}}
{{- with .Boot}}
    <kernel>{{x .Kernel}}</kernel>
    <initrd>{{x .Initrd}}</initrd>
{{- end}}
{{- if .Cmdline}}
    <cmdline>{{x .Cmdline}}</cmdline>
{{- end}}
  </os>
  <features><acpi/></features>
  <devices>
{{- range .Disks}}
    <disk type='file' device='disk'>
      <driver name='qemu' type='{{.Format}}'/>
      <source file='{{x .Path}}'/>
      <target dev='{{.Target}}' bus='virtio'/>
{{- if .BootOrder}}
      <boot order='{{.BootOrder}}'/>
{{- end}}
    </disk>
{{- end}}
{{- range .CDROMTargets}}
    <disk type='file' device='cdrom'>
      <target dev='{{.}}' bus='ide'/>
      <readonly/>
    </disk>
{{- end}}
{{- range .MACs}}
    <interface type='user'>
      <mac address='{{.}}'/>
      <model type='virtio'/>
    </interface>
{{- end}}
{{- if .ConsoleLog}}
    <serial type='file'><source path='{{x .ConsoleLog}}'/><target port='0'/></serial>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
{{- end}}
  </devices>
</domain>
`))

func (vm *TestVM) domainXML(t testing.TB) string {
	t.Helper()
	var b strings.Builder
	data := struct {
		*TestVM
		Template     string
		CDROMTargets []string
	}{TestVM: vm, CDROMTargets: []string{"hdc", "hdd"}[:vm.CDROMs]}
	if vm.Loader != "" {
		_, data.Template = ovmf(t)
	}
	if err := domainTemplate.Execute(&b, data); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// remove destroys and undefines the domain.
func (vm *TestVM) remove(t testing.TB) {
	t.Helper()
	if _, err := vm.lv.TryVirsh("domstate", vm.Name); err != nil {
		return // already gone
	}
	_, _ = vm.lv.TryVirsh("destroy", vm.Name)
	if _, err := vm.lv.TryVirsh("undefine", "--nvram", "--checkpoints-metadata",
		"--snapshots-metadata", vm.Name); err != nil {
		t.Errorf("undefine test VM %s: %v", vm.Name, err)
	}
}

// State returns virsh domstate: "running", "paused", "shut off".
func (vm *TestVM) State(t testing.TB) string {
	t.Helper()
	return vm.lv.Virsh(t, "domstate", vm.Name)
}

// JobType returns the "Job type" line of virsh domjobinfo: "None" when
// the domain has no job.
func (vm *TestVM) JobType(t testing.TB) string {
	t.Helper()
	for _, line := range strings.Split(vm.lv.Virsh(t, "domjobinfo", vm.Name), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "Job type" {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("virsh domjobinfo %s: no job type", vm.Name)
	return ""
}

// Start starts a shut-off domain.
func (vm *TestVM) Start(t testing.TB) {
	t.Helper()
	vm.lv.Virsh(t, "start", vm.Name)
}

// Resume resumes a paused domain.
func (vm *TestVM) Resume(t testing.TB) {
	t.Helper()
	vm.lv.Virsh(t, "resume", vm.Name)
}

func xmlText(s string) (string, error) {
	var b strings.Builder
	err := xml.EscapeText(&b, []byte(s))
	return b.String(), err
}

// colon turns "a1b2" into "a1:b2".
func colon(h string) string { return h[:2] + ":" + h[2:] }
