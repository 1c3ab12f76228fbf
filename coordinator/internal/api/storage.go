package api

import (
	"context"
	"regexp"

	"google.golang.org/protobuf/types/known/emptypb"

	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// storageIdent is a Ceph pool or LVM volume group name.
var storageIdent = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}$`)

func (s *targetInventoryService) CreatePrimaryStorage(ctx context.Context, req *ferryv1.CreatePrimaryStorageRequest) (*ferryv1.PrimaryStorage, error) {
	ps, err := s.createPrimaryStorage(ctx, req)
	return reply(ctx, s.a, ps, err)
}

func (s *targetInventoryService) createPrimaryStorage(ctx context.Context, req *ferryv1.CreatePrimaryStorageRequest) (*ferryv1.PrimaryStorage, error) {
	in := req.GetPrimaryStorage()
	if in == nil {
		return nil, invalid("primary_storage", "required")
	}
	c := &checker{}
	checkRequestID(c, req.GetRequestId())
	ps := &ferryv1.PrimaryStorage{
		Name:        s.a.newName(c, "primary_storage.name", in.GetName(), colStorages),
		DisplayName: in.GetDisplayName(),
		Cluster:     in.GetCluster(),
		Type:        in.GetType(),
		Path:        in.GetPath(),
		CephPool:    in.GetCephPool(),
		VolumeGroup: in.GetVolumeGroup(),
	}
	checkText(c, "primary_storage.display_name", ps.DisplayName, maxDisplayName)
	checkRef(c, "primary_storage.cluster", ps.Cluster, colClusters)
	checkEnum(c, "primary_storage.type", ps.Type, true)
	checkStorageLocation(c, ps)
	if err := c.err(); err != nil {
		return nil, err
	}
	if _, ok := s.a.ledger.Cluster(ps.Cluster); !ok {
		return nil, notFound("primary_storage.cluster", ps.Cluster)
	}
	cmd := &ledgerv1.Command{Op: &ledgerv1.Command_PutPrimaryStorage{PutPrimaryStorage: &ledgerv1.PutPrimaryStorage{PrimaryStorage: ps, RequestId: req.GetRequestId()}}}
	name, err := s.a.createOne(ctx, req.GetRequestId(), colStorages, cmd)
	if err != nil {
		return nil, err
	}
	return lookup(s.a.ledger.PrimaryStorage, name, "primary storage")
}

// checkStorageLocation requires the field of the storage's type and
// refuses the fields of the other types.
func checkStorageLocation(c *checker, ps *ferryv1.PrimaryStorage) {
	var wantPath, wantPool, wantVG bool
	switch ps.GetType() {
	case ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_LOCAL, ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_NFS:
		wantPath = true
		checkAbsPath(c, "primary_storage.path", ps.GetPath(), "the storage directory on the hosts")
	case ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_CEPH:
		wantPool = true
		checkStorageIdent(c, "primary_storage.ceph_pool", ps.GetCephPool(), "the RBD pool")
	case ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_SHAREDBLOCK:
		wantVG = true
		checkStorageIdent(c, "primary_storage.volume_group", ps.GetVolumeGroup(), "the LVM volume group")
	default:
		return
	}
	if !wantPath && ps.GetPath() != "" {
		c.add("primary_storage.path", "only local and nfs storage have a path")
	}
	if !wantPool && ps.GetCephPool() != "" {
		c.add("primary_storage.ceph_pool", "only ceph storage has a pool")
	}
	if !wantVG && ps.GetVolumeGroup() != "" {
		c.add("primary_storage.volume_group", "only sharedblock storage has a volume group")
	}
}

func checkStorageIdent(c *checker, field, v, what string) {
	switch {
	case v == "":
		c.add(field, "required: %s", what)
	case !storageIdent.MatchString(v):
		c.add(field, "%q is not a valid name of %s", v, what)
	}
}

func (s *targetInventoryService) GetPrimaryStorage(ctx context.Context, req *ferryv1.GetPrimaryStorageRequest) (*ferryv1.PrimaryStorage, error) {
	ps, err := get(s.a.ledger.PrimaryStorage, req.GetName(), colStorages, "primary storage")
	return reply(ctx, s.a, ps, err)
}

func (s *targetInventoryService) ListPrimaryStorages(ctx context.Context, req *ferryv1.ListPrimaryStoragesRequest) (*ferryv1.ListPrimaryStoragesResponse, error) {
	c := &checker{}
	checkOptionalRef(c, "cluster", req.GetCluster(), colClusters)
	if err := c.err(); err != nil {
		return reply[*ferryv1.ListPrimaryStoragesResponse](ctx, s.a, nil, err)
	}
	page, next, err := paginate(s.a.ledger.PrimaryStorages(req.GetCluster()), req.GetPageSize(), req.GetPageToken())
	return reply(ctx, s.a, &ferryv1.ListPrimaryStoragesResponse{PrimaryStorages: page, NextPageToken: next}, err)
}

func (s *targetInventoryService) DeletePrimaryStorage(ctx context.Context, req *ferryv1.DeletePrimaryStorageRequest) (*emptypb.Empty, error) {
	err := s.a.deleteResource(ctx, req.GetName(), colStorages, func(d *ledgerv1.DeleteResource) *ledgerv1.Command {
		return &ledgerv1.Command{Op: &ledgerv1.Command_DeletePrimaryStorage{DeletePrimaryStorage: d}}
	})
	return reply(ctx, s.a, &emptypb.Empty{}, err)
}
