package e2e

import (
	"crypto/sha1" //nolint:gosec // the API takes vSphere's SHA-1 thumbprints
	"fmt"
	"maps"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
	"libvirt.org/go/libvirtxml"

	"github.com/ferry-v2v/ferry/agent/internal/source/vmware"
	"github.com/ferry-v2v/ferry/agent/internal/source/vmware/vcsimtest"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// TestMigrateVMwareVM migrates a VM of an in-process vCenter simulator
// whose three disks are real VMDKs (streamOptimized, monolithicSparse,
// monolithicFlat) into a libvirt domain, through the real coordinator and
// a second agent that serves as the vmware migration server. Every disk
// is verified against the checksums the copy recorded. The job leaves its
// NICs to a network-mapping group that maps both source portgroups (one
// distributed, one standard) to the test's L3 network, and asks for the
// source NICs' addresses: each target NIC keeps its source MAC and gets
// the guest address VMware Tools reported inside the network's range, as
// a DHCP reservation of the libvirt network.
func TestMigrateVMwareVM(t *testing.T) {
	t.Parallel() // see doc.go
	w := newWorld(t)
	sim := vcsimtest.Start(t)
	raws := prepareVMwareVM(t, sim)
	guestIPs := w.setVMwareGuestIPs(sim)
	source := w.createVMwareSource(sim)
	server := w.createVMwareServer()

	vm := w.sourceVM(source, "DC0_H0_VM0")
	if vm.GetCpus() != 2 || vm.GetMemoryBytes() != 64<<20 || vm.GetFirmware() != ferryv1.Firmware_FIRMWARE_UEFI ||
		len(vm.GetDisks()) != 3 || len(vm.GetNics()) != 2 {
		t.Fatalf("ListSourceVMs described the VM as %v", vm)
	}
	if pg0, pg1 := vm.GetNics()[0].GetPortgroup(), vm.GetNics()[1].GetPortgroup(); pg0 != "DC0_DVPG0" || pg1 != "VM Network" {
		t.Fatalf("source NICs on portgroups %q and %q, want DC0_DVPG0 (distributed) and VM Network (standard)", pg0, pg1)
	}
	group := w.createMappingGroup(source, "DC0_DVPG0", "VM Network")
	// The simulator's disks hold no OS for a guest conversion to adapt.
	spec := w.spec(vm, &ferryv1.MigrationOptions{UseSourceNicAddress: true, GuestConversion: ferryv1.GuestConversion_GUEST_CONVERSION_OFF})
	spec.Target.Nics = nil // from the group
	resp, err := w.f.client.Jobs().CreateMigrationJobs(ctx(t, 10*time.Second), &ferryv1.CreateMigrationJobsRequest{
		Source: source, MigrationServer: server, Jobs: []*ferryv1.MigrationJobSpec{spec}, NetworkMappingGroup: group})
	must(t, err)
	name := resp.GetJobs()[0].GetName()
	for i, n := range resp.GetJobs()[0].GetTarget().GetNics() {
		src := vm.GetNics()[i]
		if n.GetL3Network() != w.l3 || !strings.EqualFold(n.GetMac(), src.GetMac()) || n.GetIp() != guestIPs[src.GetMac()] {
			t.Errorf("target NIC %d %v, want %s with MAC %s and IP %s", i, n, w.l3, src.GetMac(), guestIPs[src.GetMac()])
		}
	}
	job := w.waitJob(name, 3*time.Minute, "the job to end", terminal)
	if job.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
		t.Fatalf("job ended %s: %s", job.GetState(), job.GetReason())
	}
	for i, d := range vm.GetDisks() {
		compare(t, raws[i], w.volume(name, d.GetTarget()))
	}
	checkVerified(t, w.f.agents[w.vmwareHost()], job, len(vm.GetDisks()))
	if l, ok := sim.Leases.Last(); !ok || l.State != vcsimtest.LeaseCompleted {
		t.Errorf("export lease %+v, want completed", l)
	}
	var dom libvirtxml.Domain
	must(t, dom.Unmarshal(w.lv.Virsh(t, "dumpxml", spec.GetTarget().GetVmName())))
	if dom.VCPU == nil || dom.VCPU.Value != 2 || memBytes(dom.Memory.Value, dom.Memory.Unit) != 64<<20 {
		t.Errorf("target vCPUs %v memory %v, want 2 and 64 MiB", dom.VCPU, dom.Memory)
	}
	if dom.OS == nil || dom.OS.Loader == nil && dom.OS.Firmware != "efi" {
		t.Errorf("target OS section %+v has no UEFI loader", dom.OS)
	}
	if len(dom.Devices.Interfaces) != len(vm.GetNics()) {
		t.Fatalf("%d target NICs, want %d", len(dom.Devices.Interfaces), len(vm.GetNics()))
	}
	for i, ifc := range dom.Devices.Interfaces {
		if ifc.MAC == nil || !strings.EqualFold(ifc.MAC.Address, vm.GetNics()[i].GetMac()) {
			t.Errorf("NIC %d MAC %+v, want the source's %s", i, ifc.MAC, vm.GetNics()[i].GetMac())
		}
		if ifc.Source == nil || ifc.Source.Network == nil || ifc.Source.Network.Network != w.netName {
			t.Errorf("NIC %d source %+v, want libvirt network %s", i, ifc.Source, w.netName)
		}
	}
	w.checkDHCPHosts(guestIPs)
}

// setVMwareGuestIPs makes the guest of DC0_H0_VM0 report addresses on its
// NICs: on the first a link-local one, one outside the test network's
// range and one inside it; on the second one inside. It returns the
// address inside the range by MAC.
func (w *world) setVMwareGuestIPs(sim *vcsimtest.Sim) map[string]string {
	vm := sim.VM(ctx(w.t, 10*time.Second), w.t, "DC0_H0_VM0")
	var m mo.VirtualMachine
	must(w.t, vm.Properties(ctx(w.t, 10*time.Second), vm.Reference(), []string{"config.hardware"}, &m))
	var macs []string
	for _, d := range object.VirtualDeviceList(m.Config.Hardware.Device).SelectByType((*types.VirtualEthernetCard)(nil)) {
		macs = append(macs, strings.ToLower(d.(types.BaseVirtualEthernetCard).GetVirtualEthernetCard().MacAddress))
	}
	if len(macs) != 2 {
		w.t.Fatalf("the simulator VM has NICs %v, want 2", macs)
	}
	subnet := strings.TrimSuffix(w.l3Range[0], ".10") // 10.N.0, the range is .10 to .99
	want := map[string]string{macs[0]: subnet + ".21", macs[1]: subnet + ".22"}
	sim.SetGuestIPs(w.t, vm.Reference(), map[string][]string{
		macs[0]: {"fe80::250:56ff:fe00:1", "192.0.2.10", want[macs[0]]},
		macs[1]: {want[macs[1]]},
	})
	return want
}

// createMappingGroup maps the portgroups of source to the world's L3
// network.
func (w *world) createMappingGroup(source string, portgroups ...string) string {
	g := &ferryv1.NetworkMappingGroup{DisplayName: "e2e " + w.id, Source: source}
	for _, pg := range portgroups {
		g.Mappings = append(g.Mappings, &ferryv1.NetworkMapping{SourceNetwork: pg, L3Network: w.l3})
	}
	resp, err := w.f.client.NetworkMappings().CreateNetworkMappingGroup(ctx(w.t, 10*time.Second),
		&ferryv1.CreateNetworkMappingGroupRequest{NetworkMappingGroup: g})
	must(w.t, err)
	return resp.GetName()
}

// checkDHCPHosts checks the world's libvirt network reserves each address
// of want for its MAC, and nothing else.
func (w *world) checkDHCPHosts(want map[string]string) {
	var n libvirtxml.Network
	must(w.t, n.Unmarshal(w.lv.Virsh(w.t, "net-dumpxml", w.netName)))
	got := map[string]string{}
	for _, ip := range n.IPs {
		if ip.DHCP == nil {
			continue
		}
		for _, h := range ip.DHCP.Hosts {
			got[strings.ToLower(h.MAC)] = h.IP
		}
	}
	if !maps.Equal(got, want) {
		w.t.Errorf("DHCP host entries of %s %v, want %v", w.netName, got, want)
	}
}

// prepareVMwareVM gives the simulator's VM DC0_H0_VM0 three disks made
// from raw images, UEFI, 2 vCPUs, 64 MiB and a second NIC; it returns the
// raw images in disk order.
func prepareVMwareVM(t *testing.T, sim *vcsimtest.Sim) []string {
	dir := t.TempDir()
	spec := vcsimtest.VMSpec{Firmware: "efi", CPUs: 2, MemoryMB: 64, ExtraNICNetwork: "VM Network"}
	var raws []string
	for i, sub := range []string{"streamOptimized", "monolithicSparse", "monolithicFlat"} {
		raw := vcsimtest.RawImage(t, dir, sub, 16<<20, uint64(i+7))
		raws = append(raws, raw)
		spec.Disks = append(spec.Disks, vcsimtest.Disk{Files: vcsimtest.ConvertVMDK(t, raw, dir, sub, sub), Capacity: 16 << 20})
	}
	vm := sim.PrepareVM(ctx(t, 30*time.Second), t, "DC0_H0_VM0", spec)
	var m mo.VirtualMachine
	must(t, vm.Properties(ctx(t, 10*time.Second), vm.Reference(), []string{"config.hardware"}, &m))
	if n := len(object.VirtualDeviceList(m.Config.Hardware.Device).SelectByType((*types.VirtualDisk)(nil))); n != 3 {
		t.Fatalf("the simulator VM has %d disks, want 3", n)
	}
	return raws
}

// createVMwareSource registers the simulator as a vCenter, its
// certificate pinned by SHA-1 thumbprint.
func (w *world) createVMwareSource(sim *vcsimtest.Sim) string {
	port, err := strconv.Atoi(sim.Port())
	must(w.t, err)
	return w.createVMwareSourceAt(sim, sim.Address(), port)
}

// createVMwareSourceAt is createVMwareSource reaching the simulator at
// host:port (a proxy in front of it).
func (w *world) createVMwareSourceAt(sim *vcsimtest.Sim, host string, port int) string {
	srcs := w.f.client.Sources()
	cr, err := srcs.CreateCredential(ctx(w.t, 10*time.Second), &ferryv1.CreateCredentialRequest{Credential: &ferryv1.Credential{
		Type: ferryv1.CredentialType_CREDENTIAL_TYPE_PASSWORD, Secret: sim.Password()}})
	must(w.t, err)
	s, err := srcs.CreateSource(ctx(w.t, 10*time.Second), &ferryv1.CreateSourceRequest{Source: &ferryv1.Source{
		Type: ferryv1.Platform_PLATFORM_VMWARE, Vcenter: &ferryv1.VCenterConnection{
			Address: host, Port: int32(port), User: sim.User(), Credential: cr.GetName(),
			Thumbprint: vmware.Thumbprint(sim.Server.Certificate(), sha1.Size)}}})
	must(w.t, err)
	return s.GetName()
}

// createVMwareServer starts a second agent and makes it a vmware
// migration server of the world's cluster.
func (w *world) createVMwareServer() string { return w.createVMwareServerWith(0) }

// createVMwareServerWith is createVMwareServer with the copy limited to
// downstream bits per second (none when 0).
func (w *world) createVMwareServerWith(downstream int64) string {
	host := w.vmwareHost()
	w.f.startAgent(host, w.cacheDir)
	ms, err := w.f.client.MigrationServers().CreateMigrationServer(ctx(w.t, 10*time.Second), &ferryv1.CreateMigrationServerRequest{
		MigrationServer: &ferryv1.MigrationServer{Host: "hosts/" + host, Type: ferryv1.Platform_PLATFORM_VMWARE, CachePath: w.cacheDir,
			DownstreamBitsPerSecond: downstream}})
	must(w.t, err)
	return ms.GetName()
}

// vmwareHost names the agent createVMwareServer starts.
func (w *world) vmwareHost() string { return fmt.Sprintf("e2e-vmw-%s", w.id) }

// checkVerified checks that every disk of job, and job itself, is
// verified, and that agent logged each verification.
func checkVerified(t *testing.T, agent *proc, job *ferryv1.MigrationJob, disks int) {
	t.Helper()
	for _, d := range job.GetDisks() {
		if !d.GetVerified() {
			t.Errorf("disk %s not verified against the source's checksums", d.GetSourceDisk())
		}
	}
	if !job.GetVerified() || len(job.GetDisks()) != disks {
		t.Errorf("job verified = %v with %d disks reported, want true for %d", job.GetVerified(), len(job.GetDisks()), disks)
	}
	if l := agent.lines(`msg="disk verified"`); len(l) != disks {
		t.Errorf("the agent logged %d disks verified, want %d: %v", len(l), disks, l)
	}
}
