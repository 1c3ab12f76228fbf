package vcsimtest

import (
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// Disk is a disk to give a VM: files copied into the VM's datastore
// folder, the first being the one the disk's backing names (the
// descriptor of a flat disk, then its -flat.vmdk).
type Disk struct {
	Files    []string
	Capacity int64
	// Mode is the disk mode; persistent when empty.
	Mode string
}

// VMSpec is what PrepareVM makes of a simulator VM.
type VMSpec struct {
	Disks    []Disk
	Firmware string // "efi" or "bios"; unchanged when empty
	// ExtraNICNetwork adds a vmxnet3 NIC on this standard portgroup.
	ExtraNICNetwork string
	MemoryMB        int32
	CPUs            int32
}

// VM finds a simulator VM by name.
func (s *Sim) VM(ctx context.Context, t testing.TB, name string) *object.VirtualMachine {
	t.Helper()
	c := s.Client(ctx, t)
	f := find.NewFinder(c.Client)
	dc, err := f.DefaultDatacenter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f.SetDatacenter(dc)
	vm, err := f.VirtualMachine(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	return vm
}

// DatastoreDir is the local directory behind datastore LocalDS_0.
func (s *Sim) DatastoreDir() string {
	ds := s.Model.Map().Any("Datastore").(*simulator.Datastore)
	return ds.Info.GetDatastoreInfo().Url
}

// DatastoreName is the name of the datastore VMs live on.
func (s *Sim) DatastoreName() string {
	return s.Model.Map().Any("Datastore").(*simulator.Datastore).Name
}

// PrepareVM replaces the disks of VM name with spec's files and applies
// the rest of spec.
func (s *Sim) PrepareVM(ctx context.Context, t testing.TB, name string, spec VMSpec) *object.VirtualMachine {
	t.Helper()
	vm := s.VM(ctx, t, name)
	devices, err := vm.Device(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if old := devices.SelectByType((*types.VirtualDisk)(nil)); len(old) > 0 {
		if err := vm.RemoveDevice(ctx, true, old...); err != nil {
			t.Fatalf("remove disks: %v", err)
		}
	}
	ctrl, err := devices.FindSCSIController("")
	if err != nil {
		t.Fatal(err)
	}
	cs := types.VirtualMachineConfigSpec{Firmware: spec.Firmware, MemoryMB: int64(spec.MemoryMB), NumCPUs: spec.CPUs}
	for i, d := range spec.Disks {
		// No file operation: the disk's files are there already.
		cs.DeviceChange = append(cs.DeviceChange, &types.VirtualDeviceConfigSpec{
			Operation: types.VirtualDeviceConfigSpecOperationAdd, Device: s.diskDevice(t, name, ctrl, int32(i), d)})
	}
	if spec.ExtraNICNetwork != "" {
		cs.DeviceChange = append(cs.DeviceChange, &types.VirtualDeviceConfigSpec{
			Operation: types.VirtualDeviceConfigSpecOperationAdd, Device: s.nic(ctx, t, spec.ExtraNICNetwork)})
	}
	task, err := vm.Reconfigure(ctx, cs)
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		t.Fatalf("reconfigure %s: %v", name, err)
	}
	return vm
}

func (s *Sim) diskDevice(t testing.TB, vmName string, ctrl types.BaseVirtualController, unit int32, d Disk) *types.VirtualDisk {
	dir := filepath.Join(s.DatastoreDir(), vmName)
	for _, f := range d.Files {
		if err := copyFile(f, filepath.Join(dir, filepath.Base(f))); err != nil {
			t.Fatal(err)
		}
	}
	mode := d.Mode
	if mode == "" {
		mode = string(types.VirtualDiskModePersistent)
	}
	if unit >= 7 {
		unit++ // unit 7 is the SCSI controller's own
	}
	return &types.VirtualDisk{
		VirtualDevice: types.VirtualDevice{
			Key: -100 - unit, ControllerKey: ctrl.GetVirtualController().Key, UnitNumber: types.NewInt32(unit),
			Backing: &types.VirtualDiskFlatVer2BackingInfo{
				VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{
					FileName: fmt.Sprintf("[%s] %s", s.DatastoreName(), path.Join(vmName, filepath.Base(d.Files[0]))),
				},
				DiskMode: mode, ThinProvisioned: types.NewBool(true),
			},
		},
		CapacityInBytes: d.Capacity,
		CapacityInKB:    d.Capacity >> 10,
	}
}

func (s *Sim) nic(ctx context.Context, t testing.TB, network string) types.BaseVirtualDevice {
	c := s.Client(ctx, t)
	f := find.NewFinder(c.Client)
	dc, err := f.DefaultDatacenter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f.SetDatacenter(dc)
	n, err := f.Network(ctx, network)
	if err != nil {
		t.Fatal(err)
	}
	backing, err := n.EthernetCardBackingInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	card, err := object.EthernetCardTypes().CreateEthernetCard("vmxnet3", backing)
	if err != nil {
		t.Fatal(err)
	}
	return card
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// IgnoreShutdown makes the guest of vm ignore Tools shutdowns until the VM
// is powered off.
func (s *Sim) IgnoreShutdown(vm types.ManagedObjectReference) {
	obj := s.Model.Map().Get(vm).(*simulator.VirtualMachine)
	s.Model.Map().Put(&stubbornVM{VirtualMachine: obj})
}

// stubbornVM answers ShutdownGuest and does nothing; PowerOff puts the
// simulator's own VM object back before powering it off, as the
// simulator's snapshot code expects that type.
type stubbornVM struct {
	*simulator.VirtualMachine
}

func (vm *stubbornVM) ShutdownGuest(*simulator.Context, *types.ShutdownGuest) soap.HasFault {
	return &methods.ShutdownGuestBody{Res: new(types.ShutdownGuestResponse)}
}

func (vm *stubbornVM) PowerOffVMTask(ctx *simulator.Context, req *types.PowerOffVM_Task) soap.HasFault {
	ctx.Map.Put(vm.VirtualMachine)
	return vm.VirtualMachine.PowerOffVMTask(ctx, req)
}

// SetGuestIPs makes the guest of vm report addresses on its NICs in
// guest.net, as VMware Tools do: ips by the NIC's MAC address (any case).
// The simulator already lists every NIC there, with its MAC and network;
// a MAC it does not list fails the test.
func (s *Sim) SetGuestIPs(t testing.TB, vm types.ManagedObjectReference, ips map[string][]string) {
	t.Helper()
	sctx := simulator.NewContext()
	sctx.Map = s.Model.Map()
	obj := s.Model.Map().Get(vm).(*simulator.VirtualMachine)
	left := map[string][]string{}
	for mac, a := range ips {
		left[strings.ToLower(mac)] = a
	}
	s.Model.Map().WithLock(sctx, obj, func() {
		net := slices.Clone(obj.Guest.Net)
		for i := range net {
			mac := strings.ToLower(net[i].MacAddress)
			if a, ok := left[mac]; ok {
				net[i].IpAddress = slices.Clone(a)
				delete(left, mac)
			}
		}
		s.Model.Map().Update(sctx, obj, []types.PropertyChange{{Name: "guest.net", Val: net}})
	})
	if len(left) > 0 {
		t.Fatalf("VM %s has no NIC with MAC %v in guest.net", vm.Value, left)
	}
}
