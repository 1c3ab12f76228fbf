package api

import (
	"context"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// targetInventoryService is ferry.v1.TargetInventoryService: clusters, hosts, primary
// storage and L3 networks.
type targetInventoryService struct {
	ferryv1.UnimplementedTargetInventoryServiceServer
	a *API
}

func (s *targetInventoryService) CreateCluster(ctx context.Context, req *ferryv1.CreateClusterRequest) (*ferryv1.Cluster, error) {
	cl, err := s.createCluster(ctx, req)
	return reply(ctx, s.a, cl, err)
}

func (s *targetInventoryService) createCluster(ctx context.Context, req *ferryv1.CreateClusterRequest) (*ferryv1.Cluster, error) {
	c := &checker{}
	checkRequestID(c, req.GetRequestId())
	in := req.GetCluster()
	if in == nil {
		return nil, invalid("cluster", "required")
	}
	cl := &ferryv1.Cluster{
		Name:        s.a.newName(c, "cluster.name", in.GetName(), colClusters),
		DisplayName: in.GetDisplayName(),
		Zone:        in.GetZone(),
	}
	checkText(c, "cluster.display_name", cl.DisplayName, maxDisplayName)
	checkText(c, "cluster.zone", cl.Zone, maxLabel)
	if err := c.err(); err != nil {
		return nil, err
	}
	cmd := &ledgerv1.Command{Op: &ledgerv1.Command_PutCluster{PutCluster: &ledgerv1.PutCluster{Cluster: cl, RequestId: req.GetRequestId()}}}
	name, err := s.a.createOne(ctx, req.GetRequestId(), colClusters, cmd)
	if err != nil {
		return nil, err
	}
	return lookup(s.a.ledger.Cluster, name, "cluster")
}

func (s *targetInventoryService) GetCluster(ctx context.Context, req *ferryv1.GetClusterRequest) (*ferryv1.Cluster, error) {
	cl, err := get(s.a.ledger.Cluster, req.GetName(), colClusters, "cluster")
	return reply(ctx, s.a, cl, err)
}

func (s *targetInventoryService) ListClusters(ctx context.Context, req *ferryv1.ListClustersRequest) (*ferryv1.ListClustersResponse, error) {
	page, next, err := paginate(s.a.ledger.Clusters(), req.GetPageSize(), req.GetPageToken())
	return reply(ctx, s.a, &ferryv1.ListClustersResponse{Clusters: page, NextPageToken: next}, err)
}

func (s *targetInventoryService) DeleteCluster(ctx context.Context, req *ferryv1.DeleteClusterRequest) (*emptypb.Empty, error) {
	err := s.a.deleteResource(ctx, req.GetName(), colClusters, func(d *ledgerv1.DeleteResource) *ledgerv1.Command {
		return &ledgerv1.Command{Op: &ledgerv1.Command_DeleteCluster{DeleteCluster: d}}
	})
	return reply(ctx, s.a, &emptypb.Empty{}, err)
}

func (s *targetInventoryService) GetHost(ctx context.Context, req *ferryv1.GetHostRequest) (*ferryv1.Host, error) {
	h, err := get(s.a.ledger.Host, req.GetName(), colHosts, "host")
	return reply(ctx, s.a, h, err)
}

func (s *targetInventoryService) ListHosts(ctx context.Context, req *ferryv1.ListHostsRequest) (*ferryv1.ListHostsResponse, error) {
	c := &checker{}
	checkOptionalRef(c, "cluster", req.GetCluster(), colClusters)
	if err := c.err(); err != nil {
		return reply[*ferryv1.ListHostsResponse](ctx, s.a, nil, err)
	}
	page, next, err := paginate(s.a.ledger.Hosts(req.GetCluster()), req.GetPageSize(), req.GetPageToken())
	return reply(ctx, s.a, &ferryv1.ListHostsResponse{Hosts: page, NextPageToken: next}, err)
}

// SetHostMaintenance puts a host into maintenance or takes it out.
// Placement never picks a host in maintenance for a new job; jobs
// already placed on it go on.
func (s *targetInventoryService) SetHostMaintenance(ctx context.Context, req *ferryv1.SetHostMaintenanceRequest) (*ferryv1.SetHostMaintenanceResponse, error) {
	h, err := s.setHostMaintenance(ctx, req)
	return reply(ctx, s.a, &ferryv1.SetHostMaintenanceResponse{Host: h}, err)
}

func (s *targetInventoryService) setHostMaintenance(ctx context.Context, req *ferryv1.SetHostMaintenanceRequest) (*ferryv1.Host, error) {
	c := &checker{}
	checkRef(c, "name", req.GetName(), colHosts)
	checkRequestID(c, req.GetRequestId())
	if err := c.err(); err != nil {
		return nil, err
	}
	const method = "SetHostMaintenance"
	again, err := s.a.replayed(req.GetRequestId(), method, req.GetName())
	if err != nil {
		return nil, err
	}
	if again {
		return lookup(s.a.ledger.Host, req.GetName(), "host")
	}
	cmd := &ledgerv1.Command{Op: &ledgerv1.Command_SetHostMaintenance{SetHostMaintenance: &ledgerv1.SetHostMaintenance{
		Name: req.GetName(), Maintenance: req.GetMaintenance()}}}
	if _, err := s.a.propose(ctx, withRequest(cmd, req.GetRequestId(), method, req.GetName())); err != nil {
		return nil, err
	}
	s.a.log.Info("host maintenance", "host", req.GetName(), "maintenance", req.GetMaintenance())
	return lookup(s.a.ledger.Host, req.GetName(), "host")
}

// lookup reads a resource the API has just written.
func lookup[T proto.Message](read func(string) (T, bool), name, what string) (T, error) {
	v, ok := read(name)
	if !ok {
		var zero T
		return zero, notFound("name", what+" "+name)
	}
	return withETag(v), nil
}

// get serves a Get: the name is checked, then read from the local ledger.
func get[T proto.Message](read func(string) (T, bool), name, collection, what string) (T, error) {
	if err := checkName(name, collection); err != nil {
		var zero T
		return zero, err
	}
	return lookup(read, name, what)
}

// deleteResource serves a Delete whose answer is empty.
func (a *API) deleteResource(ctx context.Context, name, collection string, cmd func(*ledgerv1.DeleteResource) *ledgerv1.Command) error {
	if err := checkName(name, collection); err != nil {
		return err
	}
	_, err := a.propose(ctx, cmd(&ledgerv1.DeleteResource{Name: name}))
	return err
}
