package api

import (
	"context"
	"fmt"
	"strings"
	"unicode"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// maxMappings bounds the mappings of one group; maxSourceNetwork the
// length of a portgroup or network name.
const (
	maxMappings      = 1000
	maxSourceNetwork = 255
)

// mappingService is ferry.v1.NetworkMappingService.
type mappingService struct {
	ferryv1.UnimplementedNetworkMappingServiceServer
	a *API
}

// mappingFields are the paths UpdateNetworkMappingGroup accepts.
var mappingFields = []string{"display_name", "mappings"}

func (s *mappingService) CreateNetworkMappingGroup(ctx context.Context, req *ferryv1.CreateNetworkMappingGroupRequest) (*ferryv1.NetworkMappingGroup, error) {
	g, err := s.create(ctx, req)
	return reply(ctx, s.a, g, err)
}

func (s *mappingService) create(ctx context.Context, req *ferryv1.CreateNetworkMappingGroupRequest) (*ferryv1.NetworkMappingGroup, error) {
	in := req.GetNetworkMappingGroup()
	if in == nil {
		return nil, invalid("network_mapping_group", "required")
	}
	if names, ok, err := s.a.firstRequest(req.GetRequestId(), colMappings); err != nil || ok {
		return s.read(firstName(names), err)
	}
	c := &checker{}
	checkRequestID(c, req.GetRequestId())
	g := &ferryv1.NetworkMappingGroup{
		Name:        s.a.newName(c, "network_mapping_group.name", in.GetName(), colMappings),
		DisplayName: in.GetDisplayName(),
		Source:      in.GetSource(),
		Mappings:    cloneMappings(in.GetMappings()),
	}
	checkOptionalRef(c, "network_mapping_group.source", g.Source, colSources)
	s.check(c, g)
	if err := c.err(); err != nil {
		return nil, err
	}
	if err := s.checkRefs(g); err != nil {
		return nil, err
	}
	cmd := &ledgerv1.Command{Op: &ledgerv1.Command_PutNetworkMappingGroup{PutNetworkMappingGroup: &ledgerv1.PutNetworkMappingGroup{
		NetworkMappingGroup: g, RequestId: req.GetRequestId()}}}
	name, err := s.a.createOne(ctx, req.GetRequestId(), colMappings, cmd)
	return s.read(name, err)
}

// check validates the fields a caller sets, each error naming its field.
func (s *mappingService) check(c *checker, g *ferryv1.NetworkMappingGroup) {
	const p = "network_mapping_group"
	checkText(c, p+".display_name", g.DisplayName, maxDisplayName)
	switch n := len(g.Mappings); {
	case n == 0:
		c.add(p+".mappings", "at least one mapping is required: a source network and the L3 network it lands on")
	case n > maxMappings:
		c.add(p+".mappings", "at most %d mappings, got %d", maxMappings, n)
		return
	}
	seen := map[string]int{}
	for i, m := range g.Mappings {
		mp := fmt.Sprintf("%s.mappings[%d]", p, i)
		m.SourceNetwork = strings.TrimSpace(m.GetSourceNetwork())
		switch src := m.GetSourceNetwork(); {
		case src == "":
			c.add(mp+".source_network", "required: the portgroup, libvirt network or bridge name at the source")
		case len(src) > maxSourceNetwork || strings.IndexFunc(src, unicode.IsControl) >= 0:
			c.add(mp+".source_network", "%q is not a network name (at most %d characters, no control characters)", src, maxSourceNetwork)
		default:
			if k, dup := seen[src]; dup {
				c.add(mp+".source_network", "%q is also mappings[%d]; a source network lands on one L3 network", src, k)
			}
			seen[src] = i
		}
		checkRef(c, mp+".l3_network", m.GetL3Network(), colNetworks)
	}
}

// checkRefs requires the source and every L3 network to exist.
func (s *mappingService) checkRefs(g *ferryv1.NetworkMappingGroup) error {
	if g.GetSource() != "" {
		if _, ok := s.a.ledger.Source(g.GetSource()); !ok {
			return notFound("network_mapping_group.source", g.GetSource())
		}
	}
	for i, m := range g.GetMappings() {
		if _, ok := s.a.ledger.L3Network(m.GetL3Network()); !ok {
			return notFound(fmt.Sprintf("network_mapping_group.mappings[%d].l3_network", i), m.GetL3Network())
		}
	}
	return nil
}

func cloneMappings(in []*ferryv1.NetworkMapping) []*ferryv1.NetworkMapping {
	out := make([]*ferryv1.NetworkMapping, len(in))
	for i, m := range in {
		out[i] = proto.Clone(m).(*ferryv1.NetworkMapping)
		if out[i] == nil {
			out[i] = &ferryv1.NetworkMapping{}
		}
	}
	return out
}

func (s *mappingService) read(name string, err error) (*ferryv1.NetworkMappingGroup, error) {
	if err != nil {
		return nil, err
	}
	return lookup(s.a.ledger.NetworkMappingGroup, name, "network mapping group")
}

func (s *mappingService) GetNetworkMappingGroup(ctx context.Context, req *ferryv1.GetNetworkMappingGroupRequest) (*ferryv1.NetworkMappingGroup, error) {
	g, err := get(s.a.ledger.NetworkMappingGroup, req.GetName(), colMappings, "network mapping group")
	return reply(ctx, s.a, g, err)
}

func (s *mappingService) ListNetworkMappingGroups(ctx context.Context, req *ferryv1.ListNetworkMappingGroupsRequest) (*ferryv1.ListNetworkMappingGroupsResponse, error) {
	c := &checker{}
	checkOptionalRef(c, "source", req.GetSource(), colSources)
	if err := c.err(); err != nil {
		return reply[*ferryv1.ListNetworkMappingGroupsResponse](ctx, s.a, nil, err)
	}
	page, next, err := paginate(s.a.ledger.NetworkMappingGroups(req.GetSource()), req.GetPageSize(), req.GetPageToken())
	return reply(ctx, s.a, &ferryv1.ListNetworkMappingGroupsResponse{NetworkMappingGroups: page, NextPageToken: next}, err)
}

func (s *mappingService) UpdateNetworkMappingGroup(ctx context.Context, req *ferryv1.UpdateNetworkMappingGroupRequest) (*ferryv1.NetworkMappingGroup, error) {
	g, err := s.update(ctx, req)
	return reply(ctx, s.a, g, err)
}

func (s *mappingService) update(ctx context.Context, req *ferryv1.UpdateNetworkMappingGroupRequest) (*ferryv1.NetworkMappingGroup, error) {
	in := req.GetNetworkMappingGroup()
	if in == nil {
		return nil, invalid("network_mapping_group", "required: the group's name and the new values")
	}
	if err := checkName(in.GetName(), colMappings); err != nil {
		return nil, err
	}
	paths := req.GetUpdateMask().GetPaths()
	if len(paths) == 0 {
		paths = mappingFields
	}
	g, ok := s.a.ledger.NetworkMappingGroup(in.GetName())
	if !ok {
		return nil, notFound("network_mapping_group.name", in.GetName())
	}
	c := &checker{}
	for i, p := range paths {
		switch p {
		case "display_name":
			g.DisplayName = in.GetDisplayName()
		case "mappings":
			g.Mappings = cloneMappings(in.GetMappings())
		default:
			c.add(fmt.Sprintf("update_mask.paths[%d]", i), "%q cannot be updated; a group's %s can", p, strings.Join(mappingFields, " and "))
		}
	}
	s.check(c, g)
	if err := c.err(); err != nil {
		return nil, err
	}
	if err := s.checkRefs(g); err != nil {
		return nil, err
	}
	// The etag, when set, is checked as the command applies, against the
	// group then stored: of two updates from the same read, one passes.
	_, err := s.a.propose(ctx, &ledgerv1.Command{Op: &ledgerv1.Command_PutNetworkMappingGroup{PutNetworkMappingGroup: &ledgerv1.PutNetworkMappingGroup{
		NetworkMappingGroup: g, Update: true, Etag: in.GetEtag()}}})
	return s.read(g.GetName(), etagField(err, "network_mapping_group.etag"))
}

func (s *mappingService) DeleteNetworkMappingGroup(ctx context.Context, req *ferryv1.DeleteNetworkMappingGroupRequest) (*emptypb.Empty, error) {
	err := s.a.deleteResource(ctx, req.GetName(), colMappings, func(d *ledgerv1.DeleteResource) *ledgerv1.Command {
		return &ledgerv1.Command{Op: &ledgerv1.Command_DeleteNetworkMappingGroup{DeleteNetworkMappingGroup: d}}
	})
	return reply(ctx, s.a, &emptypb.Empty{}, err)
}
