package main

import (
	"context"
	"fmt"

	"github.com/ferry-v2v/ferry/pkg/client"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/targetspec"
)

// fillFromSource completes a one-VM request with what the source says of
// the VM, through targetspec as the coordinator does: fields the flags set
// are kept; NICs land on the L3 network the request's network-mapping
// group maps their network to, else on network.
func fillFromSource(ctx context.Context, cl *client.Client, req *ferryv1.CreateMigrationJobsRequest, network string) error {
	spec := req.GetJobs()[0]
	vms, err := listAllSourceVMs(ctx, cl, &ferryv1.ListSourceVMsRequest{Source: req.GetSource(),
		MigrationServer: req.GetMigrationServer(), Refresh: true})
	if err != nil {
		return err
	}
	var vm *ferryv1.SourceVm
	for _, v := range vms {
		if v.GetId() == spec.GetSourceVm() || v.GetName() == spec.GetSourceVm() || v.GetUuid() == spec.GetSourceVm() {
			vm = v
		}
	}
	if vm == nil {
		return fmt.Errorf("source %s has no VM %q; 'ferryctl source vms %s' lists them",
			req.GetSource(), spec.GetSourceVm(), req.GetSource())
	}
	opts := targetspec.Options{Network: network}
	if g := req.GetNetworkMappingGroup(); g != "" {
		r, err := cl.NetworkMappings().GetNetworkMappingGroup(ctx, &ferryv1.GetNetworkMappingGroupRequest{Name: g})
		if err != nil {
			return err
		}
		opts.Group = r
	}
	if spec.GetOptions().GetUseSourceNicAddress() {
		nets, err := cl.TargetInventory().ListL3Networks(ctx, &ferryv1.ListL3NetworksRequest{Cluster: spec.GetTarget().GetCluster(), PageSize: 1000})
		if err != nil {
			return err
		}
		opts.Networks = nets.GetL3Networks()
	}
	// What Fill leaves to the coordinator (an address to allocate) the
	// coordinator's preview says in its notes.
	if _, err := targetspec.Fill(spec, vm, opts); err != nil {
		return fmt.Errorf("VM %s: %w", spec.GetSourceVm(), err)
	}
	return nil
}
