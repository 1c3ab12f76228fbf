package api

import (
	"context"
	"encoding/base64"
	"slices"
	"strings"

	"github.com/ferry-v2v/ferry/coordinator/internal/admission"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// ListSourceVMs lists the VMs of the source's synced inventory from the
// ledger. With refresh, or when the source was never synced, it syncs the
// source first (the interceptor runs such calls on the leader).
func (s *sourceService) ListSourceVMs(ctx context.Context, req *ferryv1.ListSourceVMsRequest) (*ferryv1.ListSourceVMsResponse, error) {
	resp, err := s.listSourceVMs(ctx, req)
	return reply(ctx, s.a, resp, err)
}

func (s *sourceService) listSourceVMs(ctx context.Context, req *ferryv1.ListSourceVMsRequest) (*ferryv1.ListSourceVMsResponse, error) {
	c := &checker{}
	checkRef(c, "source", req.GetSource(), colSources)
	checkOptionalRef(c, "migration_server", req.GetMigrationServer(), colServers)
	checkEnum(c, "state", req.GetState(), false)
	if err := c.err(); err != nil {
		return nil, err
	}
	if _, ok := s.a.ledger.Source(req.GetSource()); !ok {
		return nil, notFound("source", req.GetSource())
	}
	if req.GetRefresh() || !s.a.ledger.HasSourceInventory(req.GetSource()) {
		if err := s.a.syncSource(ctx, req.GetSource(), req.GetMigrationServer()); err != nil {
			return nil, err
		}
	}
	inv, ok := s.a.ledger.SourceInventory(req.GetSource())
	if !ok {
		return nil, notFound("source", req.GetSource())
	}
	var vms []*ferryv1.SourceVm
	for _, vm := range inv.GetVms() {
		if keepVM(req, vm) {
			vms = append(vms, vm)
		}
	}
	page, next, err := paginateBy(vms, vmKey, req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	return &ferryv1.ListSourceVMsResponse{Vms: page, NextPageToken: next, SyncTime: inv.GetSyncTime()}, nil
}

func keepVM(req *ferryv1.ListSourceVMsRequest, vm *ferryv1.SourceVm) bool {
	switch {
	case !containsFold(vm.GetName(), req.GetNameContains()),
		req.GetState() != ferryv1.SourceVmState_SOURCE_VM_STATE_UNSPECIFIED && vm.GetState() != req.GetState(),
		req.Template != nil && vm.GetTemplate() != req.GetTemplate(),
		req.GetDatacenter() != "" && vm.GetDatacenter() != req.GetDatacenter(),
		req.GetCluster() != "" && vm.GetCluster() != req.GetCluster(),
		req.GetHost() != "" && vm.GetHost() != req.GetHost():
		return false
	}
	return true
}

func vmKey(vm *ferryv1.SourceVm) string { return vm.GetName() + "\x00" + vm.GetId() }

// ListSourceInventory lists the inventory objects other than VMs from the
// ledger, never calling the source.
func (s *sourceService) ListSourceInventory(ctx context.Context, req *ferryv1.ListSourceInventoryRequest) (*ferryv1.ListSourceInventoryResponse, error) {
	resp, err := s.listSourceInventory(req)
	return reply(ctx, s.a, resp, err)
}

func (s *sourceService) listSourceInventory(req *ferryv1.ListSourceInventoryRequest) (*ferryv1.ListSourceInventoryResponse, error) {
	c := &checker{}
	checkRef(c, "source", req.GetSource(), colSources)
	checkEnum(c, "kind", req.GetKind(), false)
	if err := c.err(); err != nil {
		return nil, err
	}
	src, ok := s.a.ledger.Source(req.GetSource())
	if !ok {
		return nil, notFound("source", req.GetSource())
	}
	inv, ok := s.a.ledger.SourceInventory(req.GetSource())
	if !ok {
		return nil, precondition("source", "%s was never synced%s; sync it first (SyncSource, ferryctl source sync)",
			src.GetName(), lastError(src))
	}
	var objs []*ferryv1.SourceObject
	for _, o := range inventoryObjects(inv) {
		if keepObject(req, o) {
			objs = append(objs, o)
		}
	}
	page, next, err := paginateBy(objs, objectKey, req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	return &ferryv1.ListSourceInventoryResponse{Objects: page, NextPageToken: next, SyncTime: inv.GetSyncTime(),
		Product: inv.GetProduct()}, nil
}

func lastError(src *ferryv1.Source) string { return admission.LastSyncError(src) }

// inventoryObjects flattens an inventory's objects other than VMs.
func inventoryObjects(inv *ferryv1.SourceInventory) []*ferryv1.SourceObject {
	var out []*ferryv1.SourceObject
	for _, d := range inv.GetDatacenters() {
		out = append(out, &ferryv1.SourceObject{Kind: ferryv1.SourceObjectKind_SOURCE_OBJECT_KIND_DATACENTER,
			Object: &ferryv1.SourceObject_Datacenter{Datacenter: d}})
	}
	for _, c := range inv.GetClusters() {
		out = append(out, &ferryv1.SourceObject{Kind: ferryv1.SourceObjectKind_SOURCE_OBJECT_KIND_CLUSTER,
			Object: &ferryv1.SourceObject_Cluster{Cluster: c}})
	}
	for _, h := range inv.GetHosts() {
		out = append(out, &ferryv1.SourceObject{Kind: ferryv1.SourceObjectKind_SOURCE_OBJECT_KIND_HOST,
			Object: &ferryv1.SourceObject_Host{Host: h}})
	}
	for _, n := range inv.GetNetworks() {
		out = append(out, &ferryv1.SourceObject{Kind: ferryv1.SourceObjectKind_SOURCE_OBJECT_KIND_NETWORK,
			Object: &ferryv1.SourceObject_Network{Network: n}})
	}
	for _, d := range inv.GetDatastores() {
		out = append(out, &ferryv1.SourceObject{Kind: ferryv1.SourceObjectKind_SOURCE_OBJECT_KIND_DATASTORE,
			Object: &ferryv1.SourceObject_Datastore{Datastore: d}})
	}
	return out
}

// objectPlace is an object's name, id, datacenter, cluster and host, as
// far as its kind has them.
func objectPlace(o *ferryv1.SourceObject) (name, id, dc, cluster, host string) {
	switch x := o.GetObject().(type) {
	case *ferryv1.SourceObject_Datacenter:
		return x.Datacenter.GetName(), x.Datacenter.GetId(), x.Datacenter.GetName(), "", ""
	case *ferryv1.SourceObject_Cluster:
		return x.Cluster.GetName(), x.Cluster.GetId(), x.Cluster.GetDatacenter(), x.Cluster.GetName(), ""
	case *ferryv1.SourceObject_Host:
		h := x.Host
		return h.GetName(), h.GetId(), h.GetDatacenter(), h.GetCluster(), h.GetName()
	case *ferryv1.SourceObject_Network:
		return x.Network.GetName(), x.Network.GetId(), x.Network.GetDatacenter(), "", ""
	case *ferryv1.SourceObject_Datastore:
		return x.Datastore.GetName(), x.Datastore.GetId(), x.Datastore.GetDatacenter(), "", ""
	}
	return "", "", "", "", ""
}

func keepObject(req *ferryv1.ListSourceInventoryRequest, o *ferryv1.SourceObject) bool {
	name, _, dc, cluster, host := objectPlace(o)
	switch {
	case req.GetKind() != ferryv1.SourceObjectKind_SOURCE_OBJECT_KIND_UNSPECIFIED && o.GetKind() != req.GetKind(),
		!containsFold(name, req.GetNameContains()),
		req.GetDatacenter() != "" && dc != req.GetDatacenter(),
		req.GetCluster() != "" && cluster != req.GetCluster(),
		req.GetHost() != "" && host != req.GetHost():
		return false
	}
	return true
}

func objectKey(o *ferryv1.SourceObject) string {
	name, id, _, _, _ := objectPlace(o)
	return string(rune('0'+o.GetKind())) + "\x00" + name + "\x00" + id
}

func containsFold(s, sub string) bool {
	return sub == "" || strings.Contains(strings.ToLower(s), strings.ToLower(sub))
}

// paginateBy is paginate for items without a unique name: they are
// sorted by key, and a token is the base64 of the last key served.
func paginateBy[T any](items []T, key func(T) string, pageSize int32, pageToken string) ([]T, string, error) {
	if pageSize < 0 {
		return nil, "", invalid("page_size", "must not be negative, got %d", pageSize)
	}
	size := int(pageSize)
	if size == 0 {
		size = defaultPageSize
	}
	size = min(size, maxPageSize)
	slices.SortStableFunc(items, func(a, b T) int { return strings.Compare(key(a), key(b)) })
	start := 0
	if pageToken != "" {
		last, err := base64.RawURLEncoding.DecodeString(pageToken)
		if err != nil || len(last) == 0 {
			return nil, "", invalid("page_token", "not a token this API returned; start again without one")
		}
		start, _ = slices.BinarySearchFunc(items, string(last), func(a T, k string) int {
			if key(a) <= k {
				return -1
			}
			return 1
		})
	}
	end := min(start+size, len(items))
	page := items[start:end]
	next := ""
	if end < len(items) {
		next = base64.RawURLEncoding.EncodeToString([]byte(key(page[len(page)-1])))
	}
	return page, next, nil
}
