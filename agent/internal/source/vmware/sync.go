package vmware

import (
	"context"
	"fmt"

	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// Inventory reads everything the coordinator keeps of a source: what the
// server is, its datacenters, clusters, hosts, VMs (templates included),
// networks and datastores.
func (c *Conn) Inventory(ctx context.Context) (*ferryv1.SourceInventory, error) {
	about := c.About()
	inv := &ferryv1.SourceInventory{Product: &ferryv1.SourceProduct{
		FullName: about.FullName, Version: about.Version, Build: about.Build,
		ApiVersion: about.ApiVersion, ApiType: about.ApiType,
	}}
	var dcs []mo.Datacenter
	if err := c.retrieveAll(ctx, "Datacenter", []string{"name"}, &dcs); err != nil {
		return nil, fmt.Errorf("list datacenters of %s: %w", c.cfg.hostPort(), err)
	}
	hosts, err := c.hosts(ctx)
	if err != nil {
		return nil, err
	}
	for _, h := range hosts {
		inv.Hosts = append(inv.Hosts, h.proto())
	}
	for _, dc := range dcs {
		inv.Datacenters = append(inv.Datacenters, &ferryv1.SourceDatacenter{Id: dc.Self.Value, Name: dc.Name})
		var clusters []mo.ClusterComputeResource
		if err := c.retrieveIn(ctx, dc.Self, "ClusterComputeResource", []string{"name"}, &clusters); err != nil {
			return nil, fmt.Errorf("list clusters of %s: %w", dc.Name, err)
		}
		for _, cl := range clusters {
			inv.Clusters = append(inv.Clusters, &ferryv1.SourceCluster{Id: cl.Self.Value, Name: cl.Name, Datacenter: dc.Name})
		}
		if err := c.syncDatacenter(ctx, dc, inv); err != nil {
			return nil, err
		}
	}
	vms, err := c.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	for _, vm := range vms {
		inv.Vms = append(inv.Vms, vm.Proto())
	}
	return inv, nil
}

// syncDatacenter adds the networks and datastores of one datacenter.
func (c *Conn) syncDatacenter(ctx context.Context, dc mo.Datacenter, inv *ferryv1.SourceInventory) error {
	var nets []mo.Network
	if err := c.retrieveIn(ctx, dc.Self, "Network", []string{"name"}, &nets); err != nil {
		return fmt.Errorf("list networks of %s: %w", dc.Name, err)
	}
	var pgs []mo.DistributedVirtualPortgroup
	if err := c.retrieveIn(ctx, dc.Self, "DistributedVirtualPortgroup", []string{"name", "key", "config.distributedVirtualSwitch"}, &pgs); err != nil {
		return fmt.Errorf("list distributed portgroups of %s: %w", dc.Name, err)
	}
	var switches []mo.DistributedVirtualSwitch
	if err := c.retrieveIn(ctx, dc.Self, "DistributedVirtualSwitch", []string{"name"}, &switches); err != nil {
		return fmt.Errorf("list distributed switches of %s: %w", dc.Name, err)
	}
	switchNames := map[string]string{}
	for _, s := range switches {
		switchNames[s.Self.Value] = s.Name
	}
	distributed := map[string]mo.DistributedVirtualPortgroup{}
	for _, pg := range pgs {
		distributed[pg.Self.Value] = pg
	}
	for _, n := range nets {
		out := &ferryv1.SourceNetwork{Id: n.Self.Value, Name: n.Name, Datacenter: dc.Name,
			Type: ferryv1.SourceNetworkType_SOURCE_NETWORK_TYPE_STANDARD}
		switch pg, ok := distributed[n.Self.Value]; {
		case ok:
			out.Type, out.Key = ferryv1.SourceNetworkType_SOURCE_NETWORK_TYPE_DISTRIBUTED, pg.Key
			if pg.Config.DistributedVirtualSwitch != nil {
				out.Switch = switchNames[pg.Config.DistributedVirtualSwitch.Value]
			}
		case n.Self.Type == "OpaqueNetwork":
			out.Type = ferryv1.SourceNetworkType_SOURCE_NETWORK_TYPE_OPAQUE
		}
		inv.Networks = append(inv.Networks, out)
	}
	var dss []mo.Datastore
	if err := c.retrieveIn(ctx, dc.Self, "Datastore", []string{"name", "summary"}, &dss); err != nil {
		return fmt.Errorf("list datastores of %s: %w", dc.Name, err)
	}
	for _, ds := range dss {
		inv.Datastores = append(inv.Datastores, &ferryv1.SourceDatastore{Id: ds.Self.Value, Name: ds.Name, Datacenter: dc.Name,
			Type: ds.Summary.Type, CapacityBytes: ds.Summary.Capacity, FreeBytes: ds.Summary.FreeSpace})
	}
	return nil
}

// retrieveIn reads props of every object of kind under root.
func (c *Conn) retrieveIn(ctx context.Context, root types.ManagedObjectReference, kind string, props []string, dst any) error {
	v, err := view.NewManager(c.vim).CreateContainerView(ctx, root, []string{kind}, true)
	if err != nil {
		return err
	}
	defer func() { _ = v.Destroy(context.WithoutCancel(ctx)) }()
	return v.Retrieve(ctx, []string{kind}, props, dst)
}

func (h Host) proto() *ferryv1.SourceHost {
	return &ferryv1.SourceHost{Id: h.Ref.Value, Name: h.Name, Datacenter: h.Datacenter, Cluster: h.Cluster,
		MaintenanceMode: h.InMaintenanceMode, Version: h.Version, Build: h.Build, ConnectionState: h.ConnectionState,
		Cpus: h.CPUs, MemoryBytes: h.MemoryBytes}
}
