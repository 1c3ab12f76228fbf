package api

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// ListSourceVMs asks the agent of a migration server of the source's type
// to connect to the source and list its VMs.
func (s *sourceService) ListSourceVMs(ctx context.Context, req *ferryv1.ListSourceVMsRequest) (*ferryv1.ListSourceVMsResponse, error) {
	vms, err := s.listSourceVMs(ctx, req)
	return reply(ctx, s.a, &ferryv1.ListSourceVMsResponse{Vms: vms}, err)
}

func (s *sourceService) listSourceVMs(ctx context.Context, req *ferryv1.ListSourceVMsRequest) ([]*ferryv1.SourceVm, error) {
	if s.a.inventory == nil {
		return nil, status.Error(codes.Unimplemented, "this coordinator has no agent sessions to list source VMs through")
	}
	c := &checker{}
	checkRef(c, "source", req.GetSource(), colSources)
	if req.GetMigrationServer() != "" {
		checkRef(c, "migration_server", req.GetMigrationServer(), colServers)
	}
	if err := c.err(); err != nil {
		return nil, err
	}
	src, ok := s.a.ledger.Source(req.GetSource())
	if !ok {
		return nil, notFound("source", req.GetSource())
	}
	server, err := s.pickInventoryServer(src, req.GetMigrationServer())
	if err != nil {
		return nil, err
	}
	return s.a.inventory.ListSourceVMs(ctx, src, server)
}

// pickInventoryServer returns the named server after checking it can
// reach the source, or the first enabled server of the source's type whose
// agent is connected.
func (s *sourceService) pickInventoryServer(src *ferryv1.Source, name string) (*ferryv1.MigrationServer, error) {
	if name != "" {
		ms, ok := s.a.ledger.MigrationServer(name)
		switch {
		case !ok:
			return nil, notFound("migration_server", name)
		case ms.GetType() != src.GetType():
			return nil, precondition("migration_server", "%s is a %s server and cannot reach %s source %s",
				name, ms.GetType(), src.GetType(), src.GetName())
		case !s.a.inventory.Connected(ms.GetHost()):
			return nil, precondition("migration_server", "the agent of %s on %s is not connected; start ferry-agent there first", name, ms.GetHost())
		}
		return ms, nil
	}
	for _, ms := range s.a.ledger.MigrationServers(src.GetType()) {
		if ms.GetEnabled() && s.a.inventory.Connected(ms.GetHost()) {
			return ms, nil
		}
	}
	return nil, precondition("source", "no enabled %s migration server has a connected agent to reach %s; create or enable one first",
		src.GetType(), src.GetName())
}
