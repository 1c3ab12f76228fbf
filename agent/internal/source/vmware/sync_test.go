package vmware

import (
	"context"
	"testing"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"

	"github.com/ferry-v2v/ferry/agent/internal/source/vmware/vcsimtest"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// TestInventoryMatchesSimulator reads the whole inventory of vcsim, after
// putting a host in maintenance mode, marking a VM as a template and
// changing a host's version, and checks every object field by field
// against the simulator's own model.
func TestInventoryMatchesSimulator(t *testing.T) {
	sim := vcsimtest.Start(t)
	ctx := testContext(t, 30*time.Second)
	c := sim.Client(ctx, t)
	h1 := sim.Host(t, "DC0_C0_H1")
	if _, err := object.NewHostSystem(c.Client, h1.Self).EnterMaintenanceMode(ctx, 0, false, nil); err != nil {
		t.Fatal(err)
	}
	sim.SetHostVersion(t, "DC0_C0_H2", "7.0.3")
	tmpl := sim.VM(ctx, t, "DC0_C0_RP0_VM1")
	if task, err := tmpl.PowerOff(ctx); err != nil || task.Wait(ctx) != nil {
		t.Fatalf("power off: %v", err)
	}
	if err := tmpl.MarkAsTemplate(ctx); err != nil {
		t.Fatal(err)
	}
	conn, err := Connect(ctx, simConfig(t, sim))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	inv, err := conn.Inventory(ctx)
	if err != nil {
		t.Fatalf("Inventory: %v", err)
	}
	if p := inv.GetProduct(); p.GetVersion() != sim.VCenterVersion() || p.GetApiType() != "VirtualCenter" || p.GetApiVersion() == "" || p.GetFullName() == "" {
		t.Errorf("product %v, want version %s of a VirtualCenter", p, sim.VCenterVersion())
	}
	checkDatacenters(t, sim, inv)
	checkHosts(t, sim, inv)
	checkNetworks(t, sim, inv)
	checkDatastores(t, sim, inv)
	checkVMs(ctx, t, sim, inv, tmpl.Reference().Value)
}

func checkDatacenters(t *testing.T, sim *vcsimtest.Sim, inv *ferryv1.SourceInventory) {
	t.Helper()
	dcs := sim.Model.Map().All("Datacenter")
	if len(inv.GetDatacenters()) != len(dcs) || len(dcs) != 1 || inv.GetDatacenters()[0].GetName() != dcs[0].Entity().Name ||
		inv.GetDatacenters()[0].GetId() != dcs[0].Reference().Value {
		t.Errorf("datacenters %v, vcsim has %d", inv.GetDatacenters(), len(dcs))
	}
	clusters := sim.Model.Map().All("ClusterComputeResource")
	if len(inv.GetClusters()) != len(clusters) || len(clusters) != 1 {
		t.Fatalf("clusters %v, vcsim has %d", inv.GetClusters(), len(clusters))
	}
	if cl := inv.GetClusters()[0]; cl.GetName() != clusters[0].Entity().Name || cl.GetId() != clusters[0].Reference().Value || cl.GetDatacenter() != "DC0" {
		t.Errorf("cluster %v", cl)
	}
}

func checkHosts(t *testing.T, sim *vcsimtest.Sim, inv *ferryv1.SourceInventory) {
	t.Helper()
	hosts := sim.Hosts()
	if len(inv.GetHosts()) != len(hosts) || len(hosts) != 4 {
		t.Fatalf("%d hosts, vcsim has %d", len(inv.GetHosts()), len(hosts))
	}
	byID := map[string]*ferryv1.SourceHost{}
	for _, h := range inv.GetHosts() {
		byID[h.GetId()] = h
	}
	inMaintenance := 0
	for _, h := range hosts {
		got := byID[h.Self.Value]
		wantCluster := ""
		if h.Parent.Type == "ClusterComputeResource" {
			wantCluster = sim.Model.Map().Get(*h.Parent).(mo.Entity).Entity().Name
		}
		p := h.Summary.Config.Product
		if got.GetName() != h.Name || got.GetMaintenanceMode() != h.Runtime.InMaintenanceMode || got.GetVersion() != p.Version ||
			got.GetBuild() != p.Build || got.GetCluster() != wantCluster || got.GetDatacenter() != "DC0" ||
			got.GetConnectionState() != string(h.Runtime.ConnectionState) || got.GetCpus() != int32(h.Summary.Hardware.NumCpuThreads) ||
			got.GetMemoryBytes() != h.Summary.Hardware.MemorySize {
			t.Errorf("host %s: %v; vcsim: maintenance %v version %s cluster %q", h.Name, got, h.Runtime.InMaintenanceMode, p.Version, wantCluster)
		}
		if got.GetMaintenanceMode() {
			inMaintenance++
		}
	}
	if inMaintenance != 1 || !byID[sim.Host(t, "DC0_C0_H1").Self.Value].GetMaintenanceMode() {
		t.Errorf("%d hosts in maintenance mode, want DC0_C0_H1 alone", inMaintenance)
	}
	if v := byID[sim.Host(t, "DC0_C0_H2").Self.Value].GetVersion(); v != "7.0.3" {
		t.Errorf("DC0_C0_H2 version %s, want the 7.0.3 set", v)
	}
}

func checkNetworks(t *testing.T, sim *vcsimtest.Sim, inv *ferryv1.SourceInventory) {
	t.Helper()
	byName := map[string]*ferryv1.SourceNetwork{}
	for _, n := range inv.GetNetworks() {
		byName[n.GetName()] = n
	}
	std := sim.Model.Map().All("Network")
	pgs := sim.Model.Map().All("DistributedVirtualPortgroup")
	if len(inv.GetNetworks()) != len(std)+len(pgs) || len(pgs) == 0 || len(std) == 0 {
		t.Fatalf("networks %v; vcsim has %d standard and %d distributed", inv.GetNetworks(), len(std), len(pgs))
	}
	for _, e := range std {
		if n := byName[e.Entity().Name]; n.GetType() != ferryv1.SourceNetworkType_SOURCE_NETWORK_TYPE_STANDARD || n.GetId() != e.Reference().Value || n.GetDatacenter() != "DC0" {
			t.Errorf("standard portgroup %s: %v", e.Entity().Name, n)
		}
	}
	for _, e := range pgs {
		pg := e.(*simulator.DistributedVirtualPortgroup)
		sw := sim.Model.Map().Get(*pg.Config.DistributedVirtualSwitch).(mo.Entity).Entity().Name
		if n := byName[pg.Name]; n.GetType() != ferryv1.SourceNetworkType_SOURCE_NETWORK_TYPE_DISTRIBUTED || n.GetKey() != pg.Key || n.GetSwitch() != sw {
			t.Errorf("distributed portgroup %s (key %s, switch %s): %v", pg.Name, pg.Key, sw, n)
		}
	}
}

func checkDatastores(t *testing.T, sim *vcsimtest.Sim, inv *ferryv1.SourceInventory) {
	t.Helper()
	dss := sim.Model.Map().All("Datastore")
	if len(inv.GetDatastores()) != len(dss) || len(dss) == 0 {
		t.Fatalf("datastores %v, vcsim has %d", inv.GetDatastores(), len(dss))
	}
	for i, e := range dss {
		ds := e.(*simulator.Datastore)
		var got *ferryv1.SourceDatastore
		for _, d := range inv.GetDatastores() {
			if d.GetId() == ds.Self.Value {
				got = d
			}
		}
		if got.GetName() != ds.Name || got.GetCapacityBytes() != ds.Summary.Capacity || got.GetFreeBytes() != ds.Summary.FreeSpace ||
			got.GetType() != ds.Summary.Type || got.GetCapacityBytes() <= 0 || got.GetDatacenter() != "DC0" {
			t.Errorf("datastore %d %s: %v; vcsim capacity %d free %d type %s", i, ds.Name, got, ds.Summary.Capacity, ds.Summary.FreeSpace, ds.Summary.Type)
		}
	}
}

func checkVMs(ctx context.Context, t *testing.T, sim *vcsimtest.Sim, inv *ferryv1.SourceInventory, template string) {
	t.Helper()
	vms := sim.Model.Map().All("VirtualMachine")
	if len(inv.GetVms()) != len(vms) {
		t.Fatalf("%d VMs, vcsim has %d (templates included)", len(inv.GetVms()), len(vms))
	}
	for _, got := range inv.GetVms() {
		vm := sim.Model.Map().Get(simulatorRef(got.GetId())).(*simulator.VirtualMachine)
		host := sim.HostOf(vm.Self)
		if got.GetName() != vm.Name || got.GetTemplate() != (got.GetId() == template) || got.GetTemplate() != vm.Config.Template ||
			got.GetHost() != host.Name || got.GetDatacenter() != "DC0" || got.GetGuestOsId() != vm.Config.GuestId ||
			got.GetCpus() != vm.Config.Hardware.NumCPU || got.GetMemoryBytes() != int64(vm.Config.Hardware.MemoryMB)<<20 {
			t.Errorf("VM %s: %v; vcsim: template %v host %s guest %s", vm.Name, got, vm.Config.Template, host.Name, vm.Config.GuestId)
		}
		if (host.Parent.Type == "ClusterComputeResource") != (got.GetCluster() == "DC0_C0") {
			t.Errorf("VM %s on host %s: cluster %q", vm.Name, host.Name, got.GetCluster())
		}
	}
}
