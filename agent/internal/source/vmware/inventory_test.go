package vmware

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/ferry-v2v/ferry/agent/internal/source/vmware/vcsimtest"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

func TestListVMs(t *testing.T) {
	sim := vcsimtest.Start(t)
	ctx := testContext(t, 30*time.Second)
	dir := t.TempDir()
	raw := vcsimtest.RawImage(t, dir, "a", 4<<20, 1)
	vm := sim.PrepareVM(ctx, t, "DC0_H0_VM0", vcsimtest.VMSpec{
		Disks: []vcsimtest.Disk{
			{Files: vcsimtest.ConvertVMDK(t, raw, dir, "a", "streamOptimized"), Capacity: 4 << 20},
			{Files: vcsimtest.ConvertVMDK(t, raw, dir, "b", "monolithicSparse"), Capacity: 4 << 20,
				Mode: string(types.VirtualDiskModeIndependent_persistent)},
		},
		Firmware: FirmwareEFI, ExtraNICNetwork: "VM Network", MemoryMB: 768, CPUs: 3,
	})
	macs := nicMACs(t, vm)
	// What VMware Tools would report: two addresses on the first NIC (its
	// MAC in upper case, as vSphere may give it), one on the second.
	sim.SetGuestIPs(t, vm.Reference(), map[string][]string{
		strings.ToUpper(macs[0]): {"192.0.2.10", "fe80::250:56ff:fe00:1"}, macs[1]: {"198.51.100.7"}})

	src, secrets := simSource(t, sim)
	d := NewDriver(testkit.Logger(t), Options{})
	inv, err := d.Inventory(ctx, &agentv1.InventoryRequest{Source: src,
		MigrationServer: &ferryv1.MigrationServer{Name: "migrationServers/ms", MigrationCidr: "127.0.0.0/8"}, Secrets: secrets})
	if err != nil {
		t.Fatalf("Inventory: %v", err)
	}
	var got *ferryv1.SourceVm
	for _, v := range inv.GetVms() {
		if v.GetName() == "DC0_H0_VM0" {
			got = v
		}
	}
	if got == nil {
		t.Fatalf("Inventory returned %d VMs, none DC0_H0_VM0", len(inv.GetVms()))
	}
	checkListedVM(t, got, vm.Reference().Value, macs)

	conn, err := Connect(ctx, simConfig(t, sim))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, id := range []string{vm.Reference().Value, "DC0_H0_VM0"} {
		v, err := conn.FindVM(ctx, id)
		if err != nil {
			t.Fatalf("FindVM(%s): %v", id, err)
		}
		if v.Disks[1].Dependent() || !v.Disks[0].Dependent() || v.Host.Name == "" || v.Host.Version == "" {
			t.Errorf("FindVM(%s): disks %+v host %+v", id, v.Disks, v.Host)
		}
	}
	if _, err := conn.FindVM(ctx, "no-such-vm"); err == nil {
		t.Error("FindVM found a VM that does not exist")
	}
}

// checkListedVM checks what Inventory said of the VM TestListVMs prepared.
func checkListedVM(t *testing.T, got *ferryv1.SourceVm, id string, macs []string) {
	t.Helper()
	if got.GetId() != id || got.GetCpus() != 3 || got.GetMemoryBytes() != 768<<20 ||
		got.GetFirmware() != ferryv1.Firmware_FIRMWARE_UEFI || got.GetState() != ferryv1.SourceVmState_SOURCE_VM_STATE_RUNNING {
		t.Errorf("VM: id %s cpus %d memory %d firmware %s state %s", got.GetId(), got.GetCpus(),
			got.GetMemoryBytes(), got.GetFirmware(), got.GetState())
	}
	if got.GetCdromCount() != 1 {
		t.Errorf("CD-ROMs %d, want 1", got.GetCdromCount())
	}
	if len(got.GetNics()) != len(macs) || len(macs) != 2 {
		t.Fatalf("NICs %v, want MACs %v", got.GetNics(), macs)
	}
	for i, n := range got.GetNics() {
		if n.GetMac() != macs[i] || n.GetNetwork() == "" || n.GetModel() == "" {
			t.Errorf("NIC %d: %v, want MAC %s with a portgroup and a model", i, n, macs[i])
		}
	}
	if n := got.GetNics()[1]; n.GetNetwork() != "VM Network" || n.GetModel() != "vmxnet3" {
		t.Errorf("second NIC %v, want vmxnet3 on VM Network", n)
	}
	if n := got.GetNics()[0]; n.GetNetwork() != "DC0_DVPG0" {
		t.Errorf("first NIC on %q, want the distributed portgroup's name DC0_DVPG0", n.GetNetwork())
	}
	if len(got.GetDisks()) != 2 {
		t.Fatalf("disks %v", got.GetDisks())
	}
	for _, disk := range got.GetDisks() {
		if disk.GetCapacityBytes() != 4<<20 || disk.GetBus() != "scsi" || disk.GetTarget() == "" {
			t.Errorf("disk %v", disk)
		}
	}
	if m0, m1 := got.GetDisks()[0].GetDiskMode(), got.GetDisks()[1].GetDiskMode(); m0 != "persistent" || m1 != "independent_persistent" {
		t.Errorf("disk modes %q, %q; want persistent, independent_persistent", m0, m1)
	}
	if got.GetTemplate() || got.GetGuestOsId() == "" || got.GetHost() != "DC0_H0" || got.GetCluster() != "" || got.GetDatacenter() != "DC0" {
		t.Errorf("VM template %v guest %q placed on host %q cluster %q datacenter %q; want DC0_H0 (standalone) in DC0",
			got.GetTemplate(), got.GetGuestOsId(), got.GetHost(), got.GetCluster(), got.GetDatacenter())
	}
	for _, n := range got.GetNics() {
		if n.GetPortgroup() != n.GetNetwork() {
			t.Errorf("NIC %v: portgroup differs from network", n)
		}
	}
	wantIPs := [][]string{{"192.0.2.10", "fe80::250:56ff:fe00:1"}, {"198.51.100.7"}}
	for i, n := range got.GetNics() {
		if !slices.Equal(n.GetIpAddresses(), wantIPs[i]) {
			t.Errorf("NIC %d guest addresses %v, want %v", i, n.GetIpAddresses(), wantIPs[i])
		}
	}
}

func nicMACs(t *testing.T, vm *object.VirtualMachine) []string {
	devices, err := vm.Device(testContext(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var macs []string
	for _, d := range devices.SelectByType((*types.VirtualEthernetCard)(nil)) {
		macs = append(macs, d.(types.BaseVirtualEthernetCard).GetVirtualEthernetCard().MacAddress)
	}
	return macs
}
