package vmware

import (
	"context"
	"fmt"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// Firmware values of VM.Firmware, as vSphere names them.
const (
	FirmwareBIOS = "bios"
	FirmwareEFI  = "efi"
)

// Disk modes that snapshots cover; independent disks are left out of
// snapshots and so out of an export.
var dependentModes = map[string]bool{
	"": true, string(types.VirtualDiskModePersistent): true,
	string(types.VirtualDiskModeNonpersistent): true, string(types.VirtualDiskModeUndoable): true,
	string(types.VirtualDiskModeAppend): true,
}

// VM is a virtual machine as the source describes it.
type VM struct {
	Ref        types.ManagedObjectReference
	Name, UUID string
	PowerState types.VirtualMachinePowerState
	// GuestID is vSphere's guest OS id (ubuntu64Guest, windows2019srv_64Guest).
	GuestID, GuestName string
	Firmware           string // FirmwareBIOS or FirmwareEFI
	VCPUs              int
	MemoryBytes        int64
	Template           bool
	// CBT tells whether changed block tracking is enabled.
	CBT    bool
	Host   Host
	Disks  []Disk
	NICs   []NIC
	CDROMs int
}

// ID is what jobs name the VM by: its managed object id (vm-42).
func (vm *VM) ID() string { return vm.Ref.Value }

// Host is the ESXi host a VM runs on.
type Host struct {
	Ref                  types.ManagedObjectReference
	Name, Version, Build string
	InMaintenanceMode    bool
	// Cluster is empty for a standalone host.
	Cluster, Datacenter string
	ConnectionState     string
	CPUs                int32
	MemoryBytes         int64
}

// Disk is a virtual disk of a VM.
type Disk struct {
	// Name is the device key in decimal, the disk's name in jobs.
	Name  string
	Key   int32
	Label string // Hard disk 1
	// Bus is scsi, ide, sata or nvme; Controller is the controller's type
	// (VirtualLsiLogicController) and BusNumber and Unit place the disk on it.
	Bus        string
	Controller string
	BusNumber  int32
	Unit       int32
	// File is the datastore path of the disk's descriptor.
	File          string
	CapacityBytes int64
	// Mode is persistent, independent_persistent, independent_nonpersistent...
	Mode string
	Thin bool
}

// Dependent reports whether snapshots, and so exports, include the disk.
func (d Disk) Dependent() bool { return dependentModes[d.Mode] }

// NIC is a network adapter of a VM.
type NIC struct {
	MAC string
	// Network is the portgroup's name, standard or distributed.
	Network string
	Model   string // vmxnet3, e1000e, e1000...
	// IPs are the guest's addresses on the NIC, as VMware Tools report them.
	IPs []string
}

// vmProperties are the properties an inventory reads of each VM.
var vmProperties = []string{"name", "config.uuid", "config.template", "config.guestId", "config.guestFullName",
	"config.firmware", "config.hardware", "config.changeTrackingEnabled", "runtime.powerState", "runtime.host", "guest.net"}

// ListVMs returns every VM and template of the source.
func (c *Conn) ListVMs(ctx context.Context) ([]*VM, error) {
	var mos []mo.VirtualMachine
	if err := c.retrieveAll(ctx, "VirtualMachine", vmProperties, &mos); err != nil {
		return nil, fmt.Errorf("list VMs of %s: %w", c.cfg.hostPort(), err)
	}
	return c.describe(ctx, mos)
}

var morefID = regexp.MustCompile(`^vm-[0-9]+$`)

// FindVM returns the VM whose managed object id (vm-42) or name is id.
func (c *Conn) FindVM(ctx context.Context, id string) (*VM, error) {
	var mos []mo.VirtualMachine
	if morefID.MatchString(id) {
		var vm mo.VirtualMachine
		ref := types.ManagedObjectReference{Type: "VirtualMachine", Value: id}
		err := property.DefaultCollector(c.vim).RetrieveOne(ctx, ref, vmProperties, &vm)
		if err == nil {
			mos = append(mos, vm)
		} else if !isNotFound(err) {
			return nil, fmt.Errorf("read VM %s: %w", id, err)
		}
	}
	if len(mos) == 0 {
		var all []mo.VirtualMachine
		if err := c.retrieveAll(ctx, "VirtualMachine", vmProperties, &all); err != nil {
			return nil, fmt.Errorf("find VM %s: %w", id, err)
		}
		for _, vm := range all {
			if vm.Name == id {
				mos = append(mos, vm)
			}
		}
	}
	switch len(mos) {
	case 0:
		return nil, fmt.Errorf("%w %q on %s", ErrNoVM, id, c.cfg.hostPort())
	case 1:
	default:
		return nil, fmt.Errorf("%w: %d VMs are named %q on %s; name the VM by its id", ErrNoVM, len(mos), id, c.cfg.hostPort())
	}
	vms, err := c.describe(ctx, mos)
	if err != nil {
		return nil, err
	}
	return vms[0], nil
}

func isNotFound(err error) bool {
	if !soap.IsSoapFault(err) {
		return false
	}
	_, ok := soap.ToSoapFault(err).VimFault().(types.ManagedObjectNotFound)
	return ok
}

// retrieveAll reads props of every object of kind under the root folder.
func (c *Conn) retrieveAll(ctx context.Context, kind string, props []string, dst any) error {
	v, err := view.NewManager(c.vim).CreateContainerView(ctx, c.vim.ServiceContent.RootFolder, []string{kind}, true)
	if err != nil {
		return err
	}
	defer func() { _ = v.Destroy(context.WithoutCancel(ctx)) }()
	return v.Retrieve(ctx, []string{kind}, props, dst)
}

// describe turns VMs as retrieved into VM values, with their hosts and
// portgroup names.
func (c *Conn) describe(ctx context.Context, mos []mo.VirtualMachine) ([]*VM, error) {
	hosts, err := c.hosts(ctx)
	if err != nil {
		return nil, err
	}
	portgroups, err := c.portgroups(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]*VM, 0, len(mos))
	for _, m := range mos {
		if m.Config == nil {
			continue // inaccessible or being created
		}
		vm := &VM{
			Ref: m.Self, Name: m.Name, UUID: m.Config.Uuid, PowerState: m.Runtime.PowerState,
			GuestID: m.Config.GuestId, GuestName: m.Config.GuestFullName, Firmware: m.Config.Firmware,
			VCPUs: int(m.Config.Hardware.NumCPU), MemoryBytes: int64(m.Config.Hardware.MemoryMB) << 20,
			Template: m.Config.Template,
		}
		if vm.Firmware == "" {
			vm.Firmware = FirmwareBIOS
		}
		if m.Config.ChangeTrackingEnabled != nil {
			vm.CBT = *m.Config.ChangeTrackingEnabled
		}
		if m.Runtime.Host != nil {
			vm.Host = hosts[m.Runtime.Host.Value]
		}
		describeDevices(vm, m.Config.Hardware.Device, portgroups)
		if m.Guest != nil {
			addGuestIPs(vm, m.Guest.Net)
		}
		out = append(out, vm)
	}
	return out, nil
}

// describeDevices fills the disks, NICs and CD-ROM count of vm.
func describeDevices(vm *VM, devices []types.BaseVirtualDevice, portgroups map[string]string) {
	byKey := map[int32]types.BaseVirtualDevice{}
	for _, d := range devices {
		byKey[d.GetVirtualDevice().Key] = d
	}
	for _, d := range devices {
		switch dev := d.(type) {
		case *types.VirtualDisk:
			vm.Disks = append(vm.Disks, describeDisk(dev, byKey[dev.ControllerKey]))
		case *types.VirtualCdrom:
			vm.CDROMs++
		case types.BaseVirtualEthernetCard:
			vm.NICs = append(vm.NICs, describeNIC(dev, portgroups))
		}
	}
}

func describeDisk(d *types.VirtualDisk, ctrl types.BaseVirtualDevice) Disk {
	disk := Disk{Name: strconv.Itoa(int(d.Key)), Key: d.Key, CapacityBytes: d.CapacityInBytes}
	if disk.CapacityBytes == 0 {
		disk.CapacityBytes = d.CapacityInKB << 10
	}
	if info := d.DeviceInfo; info != nil {
		disk.Label = info.GetDescription().Label
	}
	if d.UnitNumber != nil {
		disk.Unit = *d.UnitNumber
	}
	if ctrl != nil {
		disk.Controller = reflect.TypeOf(ctrl).Elem().Name()
		disk.Bus = busOf(ctrl)
		if bc, ok := ctrl.(types.BaseVirtualController); ok {
			disk.BusNumber = bc.GetVirtualController().BusNumber
		}
	}
	if fb, ok := d.Backing.(types.BaseVirtualDeviceFileBackingInfo); ok {
		disk.File = fb.GetVirtualDeviceFileBackingInfo().FileName
	}
	switch b := d.Backing.(type) {
	case *types.VirtualDiskFlatVer2BackingInfo:
		disk.Mode = b.DiskMode
		disk.Thin = b.ThinProvisioned != nil && *b.ThinProvisioned
	case *types.VirtualDiskSparseVer2BackingInfo:
		disk.Mode = b.DiskMode
	case *types.VirtualDiskSeSparseBackingInfo:
		disk.Mode = b.DiskMode
	case *types.VirtualDiskFlatVer1BackingInfo:
		disk.Mode = b.DiskMode
	case *types.VirtualDiskSparseVer1BackingInfo:
		disk.Mode = b.DiskMode
	case *types.VirtualDiskRawDiskMappingVer1BackingInfo:
		disk.Mode = b.DiskMode
	}
	return disk
}

func busOf(ctrl types.BaseVirtualDevice) string {
	switch ctrl.(type) {
	case types.BaseVirtualSCSIController:
		return "scsi"
	case *types.VirtualIDEController:
		return "ide"
	case types.BaseVirtualSATAController:
		return "sata"
	case *types.VirtualNVMEController:
		return "nvme"
	}
	return ""
}

func describeNIC(card types.BaseVirtualEthernetCard, portgroups map[string]string) NIC {
	e := card.GetVirtualEthernetCard()
	n := NIC{MAC: strings.ToLower(e.MacAddress),
		Model: strings.ToLower(strings.TrimPrefix(reflect.TypeOf(card).Elem().Name(), "Virtual"))}
	switch b := e.Backing.(type) {
	case *types.VirtualEthernetCardNetworkBackingInfo:
		n.Network = b.DeviceName
	case *types.VirtualEthernetCardDistributedVirtualPortBackingInfo:
		n.Network = portgroups[b.Port.PortgroupKey]
		if n.Network == "" {
			n.Network = b.Port.PortgroupKey
		}
	case *types.VirtualEthernetCardOpaqueNetworkBackingInfo:
		n.Network = b.OpaqueNetworkId
	}
	return n
}

// addGuestIPs gives each NIC the addresses the guest reports on its MAC.
func addGuestIPs(vm *VM, net []types.GuestNicInfo) {
	for _, g := range net {
		for i := range vm.NICs {
			if strings.EqualFold(vm.NICs[i].MAC, g.MacAddress) {
				vm.NICs[i].IPs = append(vm.NICs[i].IPs, g.IpAddress...)
			}
		}
	}
}

// hostProperties are the properties read of each ESXi host.
var hostProperties = []string{"name", "parent", "runtime.inMaintenanceMode", "runtime.connectionState",
	"summary.config.product", "summary.hardware"}

// hosts returns the ESXi hosts by managed object id, with their cluster
// and datacenter.
func (c *Conn) hosts(ctx context.Context) (map[string]Host, error) {
	var mos []mo.HostSystem
	if err := c.retrieveAll(ctx, "HostSystem", hostProperties, &mos); err != nil {
		return nil, fmt.Errorf("list hosts of %s: %w", c.cfg.hostPort(), err)
	}
	tree, err := c.ancestry(ctx)
	if err != nil {
		return nil, err
	}
	out := make(map[string]Host, len(mos))
	for _, h := range mos {
		host := Host{Ref: h.Self, Name: h.Name, InMaintenanceMode: h.Runtime.InMaintenanceMode,
			ConnectionState: string(h.Runtime.ConnectionState)}
		if p := h.Summary.Config.Product; p != nil {
			host.Version, host.Build = p.Version, p.Build
		}
		if hw := h.Summary.Hardware; hw != nil {
			host.CPUs, host.MemoryBytes = int32(hw.NumCpuThreads), hw.MemorySize
		}
		if h.Parent != nil {
			if p := tree[h.Parent.Value]; h.Parent.Type == "ClusterComputeResource" {
				host.Cluster = p.Name
			}
			host.Datacenter = datacenterOf(tree, *h.Parent)
		}
		out[h.Self.Value] = host
	}
	return out, nil
}

// ancestry returns the folders, datacenters and compute resources (the
// parents of hosts) by managed object id.
func (c *Conn) ancestry(ctx context.Context) (map[string]mo.ManagedEntity, error) {
	kinds := []string{"Folder", "Datacenter", "ComputeResource"}
	v, err := view.NewManager(c.vim).CreateContainerView(ctx, c.vim.ServiceContent.RootFolder, kinds, true)
	if err != nil {
		return nil, fmt.Errorf("read the inventory tree of %s: %w", c.cfg.hostPort(), err)
	}
	defer func() { _ = v.Destroy(context.WithoutCancel(ctx)) }()
	var mos []mo.ManagedEntity
	if err := v.Retrieve(ctx, kinds, []string{"name", "parent"}, &mos); err != nil {
		return nil, fmt.Errorf("read the inventory tree of %s: %w", c.cfg.hostPort(), err)
	}
	out := make(map[string]mo.ManagedEntity, len(mos))
	for _, m := range mos {
		out[m.Self.Value] = m
	}
	return out, nil
}

// datacenterOf walks up from ref to the datacenter holding it.
func datacenterOf(tree map[string]mo.ManagedEntity, ref types.ManagedObjectReference) string {
	for range len(tree) + 1 {
		e, ok := tree[ref.Value]
		if !ok {
			return ""
		}
		if ref.Type == "Datacenter" {
			return e.Name
		}
		if e.Parent == nil {
			return ""
		}
		ref = *e.Parent
	}
	return ""
}

// portgroups returns the names of distributed portgroups by key.
func (c *Conn) portgroups(ctx context.Context) (map[string]string, error) {
	var mos []mo.DistributedVirtualPortgroup
	if err := c.retrieveAll(ctx, "DistributedVirtualPortgroup", []string{"name", "key"}, &mos); err != nil {
		return nil, fmt.Errorf("list portgroups of %s: %w", c.cfg.hostPort(), err)
	}
	out := make(map[string]string, len(mos))
	for _, pg := range mos {
		out[pg.Key] = pg.Name
		out[pg.Self.Value] = pg.Name
	}
	return out, nil
}
