package api

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"unicode"

	"google.golang.org/protobuf/types/known/emptypb"

	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// maxIfName is the longest Linux interface name (IFNAMSIZ - 1).
const maxIfName = 15

func (s *targetInventoryService) CreateL3Network(ctx context.Context, req *ferryv1.CreateL3NetworkRequest) (*ferryv1.L3Network, error) {
	n, err := s.createL3Network(ctx, req)
	return reply(ctx, s.a, n, err)
}

func (s *targetInventoryService) createL3Network(ctx context.Context, req *ferryv1.CreateL3NetworkRequest) (*ferryv1.L3Network, error) {
	in := req.GetL3Network()
	if in == nil {
		return nil, invalid("l3_network", "required")
	}
	c := &checker{}
	checkRequestID(c, req.GetRequestId())
	n := &ferryv1.L3Network{
		Name:           s.a.newName(c, "l3_network.name", in.GetName(), colNetworks),
		DisplayName:    in.GetDisplayName(),
		Cluster:        in.GetCluster(),
		LibvirtNetwork: in.GetLibvirtNetwork(),
		Bridge:         in.GetBridge(),
		IpRangeStart:   in.GetIpRangeStart(),
		IpRangeEnd:     in.GetIpRangeEnd(),
		Gateway:        in.GetGateway(),
		PrefixLength:   in.GetPrefixLength(),
		DnsServers:     in.GetDnsServers(),
	}
	checkText(c, "l3_network.display_name", n.DisplayName, maxDisplayName)
	checkRef(c, "l3_network.cluster", n.Cluster, colClusters)
	checkAttachment(c, n)
	checkRange(c, n)
	checkDNS(c, n)
	if err := c.err(); err != nil {
		return nil, err
	}
	if _, ok := s.a.ledger.Cluster(n.Cluster); !ok {
		return nil, notFound("l3_network.cluster", n.Cluster)
	}
	cmd := &ledgerv1.Command{Op: &ledgerv1.Command_PutL3Network{PutL3Network: &ledgerv1.PutL3Network{L3Network: n, RequestId: req.GetRequestId()}}}
	name, err := s.a.createOne(ctx, req.GetRequestId(), colNetworks, cmd)
	if err != nil {
		return nil, err
	}
	return lookup(s.a.ledger.L3Network, name, "L3 network")
}

// checkAttachment requires exactly one of libvirt_network and bridge.
func checkAttachment(c *checker, n *ferryv1.L3Network) {
	switch {
	case n.LibvirtNetwork == "" && n.Bridge == "":
		c.add("l3_network.libvirt_network", "set exactly one of libvirt_network and bridge; both are empty")
	case n.LibvirtNetwork != "" && n.Bridge != "":
		c.add("l3_network.libvirt_network", "set exactly one of libvirt_network and bridge; both are set")
	case n.LibvirtNetwork != "":
		if len(n.LibvirtNetwork) > 255 || strings.ContainsAny(n.LibvirtNetwork, "/") || strings.IndexFunc(n.LibvirtNetwork, unicode.IsSpace) >= 0 {
			c.add("l3_network.libvirt_network", "%q is not a libvirt network name", n.LibvirtNetwork)
		}
	default:
		if len(n.Bridge) > maxIfName || strings.ContainsAny(n.Bridge, "/:") || strings.IndexFunc(n.Bridge, unicode.IsSpace) >= 0 || n.Bridge == "." || n.Bridge == ".." {
			c.add("l3_network.bridge", "%q is not a Linux interface name (at most %d characters, no '/', ':' or spaces)", n.Bridge, maxIfName)
		}
	}
}

// checkRange checks the allocation range, prefix and gateway, and writes
// the addresses back in canonical form.
func checkRange(c *checker, n *ferryv1.L3Network) {
	start, okStart := parseIP(n.IpRangeStart)
	end, okEnd := parseIP(n.IpRangeEnd)
	if !okStart {
		c.add("l3_network.ip_range_start", "%q is not an IP address", n.IpRangeStart)
	}
	if !okEnd {
		c.add("l3_network.ip_range_end", "%q is not an IP address", n.IpRangeEnd)
	}
	if !okStart || !okEnd {
		return
	}
	n.IpRangeStart, n.IpRangeEnd = start.String(), end.String()
	if start.Is4() != end.Is4() {
		c.add("l3_network.ip_range_end", "%s and %s are of different IP versions", start, end)
		return
	}
	if end.Less(start) {
		c.add("l3_network.ip_range_end", "%s is before ip_range_start %s", end, start)
		return
	}
	if n.PrefixLength < 1 || int(n.PrefixLength) > start.BitLen() {
		c.add("l3_network.prefix_length", "%d is not a prefix length of an IPv%d network (1-%d)", n.PrefixLength, ipVersion(start), start.BitLen())
		return
	}
	subnet := netip.PrefixFrom(start, int(n.PrefixLength)).Masked()
	if !subnet.Contains(end) {
		c.add("l3_network.ip_range_end", "%s is outside the subnet %s of ip_range_start", end, subnet)
	}
	if n.Gateway == "" {
		return
	}
	gw, ok := parseIP(n.Gateway)
	switch {
	case !ok:
		c.add("l3_network.gateway", "%q is not an IP address", n.Gateway)
	case !subnet.Contains(gw):
		c.add("l3_network.gateway", "%s is outside the subnet %s", gw, subnet)
	default:
		n.Gateway = gw.String()
	}
}

// checkDNS requires at most 3 distinct DNS server addresses and writes
// them back in canonical form.
func checkDNS(c *checker, n *ferryv1.L3Network) {
	if len(n.DnsServers) > 3 {
		c.add("l3_network.dns_servers", "at most 3, got %d", len(n.DnsServers))
		return
	}
	seen := map[string]bool{}
	for i, s := range n.DnsServers {
		a, ok := parseIP(s)
		if !ok {
			c.add(fmt.Sprintf("l3_network.dns_servers[%d]", i), "%q is not an IP address", s)
			continue
		}
		if seen[a.String()] {
			c.add(fmt.Sprintf("l3_network.dns_servers[%d]", i), "%s is listed twice", a)
		}
		seen[a.String()] = true
		n.DnsServers[i] = a.String()
	}
}

func ipVersion(a netip.Addr) int {
	if a.Is4() {
		return 4
	}
	return 6
}

func (s *targetInventoryService) GetL3Network(ctx context.Context, req *ferryv1.GetL3NetworkRequest) (*ferryv1.L3Network, error) {
	n, err := get(s.a.ledger.L3Network, req.GetName(), colNetworks, "L3 network")
	return reply(ctx, s.a, n, err)
}

func (s *targetInventoryService) ListL3Networks(ctx context.Context, req *ferryv1.ListL3NetworksRequest) (*ferryv1.ListL3NetworksResponse, error) {
	c := &checker{}
	checkOptionalRef(c, "cluster", req.GetCluster(), colClusters)
	if err := c.err(); err != nil {
		return reply[*ferryv1.ListL3NetworksResponse](ctx, s.a, nil, err)
	}
	page, next, err := paginate(s.a.ledger.L3Networks(req.GetCluster()), req.GetPageSize(), req.GetPageToken())
	return reply(ctx, s.a, &ferryv1.ListL3NetworksResponse{L3Networks: page, NextPageToken: next}, err)
}

// ReleaseL3NetworkAddress returns an address a migrated VM kept to the
// network's pool.
func (s *targetInventoryService) ReleaseL3NetworkAddress(ctx context.Context, req *ferryv1.ReleaseL3NetworkAddressRequest) (*ferryv1.ReleaseL3NetworkAddressResponse, error) {
	const method = "ReleaseL3NetworkAddress"
	c := &checker{}
	checkRef(c, "name", req.GetName(), colNetworks)
	ip, ok := parseIP(req.GetIp())
	if !ok {
		c.add("ip", "%q is not an IP address", req.GetIp())
	}
	checkRequestID(c, req.GetRequestId())
	err := c.err()
	// The target is the network and the address: the same request_id
	// cannot release another address.
	target := req.GetName() + " address " + ip.String()
	var again bool
	if err == nil {
		again, err = s.a.replayed(req.GetRequestId(), method, target)
	}
	if err == nil && !again {
		err = checkReserved(s.a, req.GetName(), ip.String())
	}
	if err == nil && !again {
		_, err = s.a.propose(ctx, withRequest(&ledgerv1.Command{Op: &ledgerv1.Command_ReleaseAddress{ReleaseAddress: &ledgerv1.ReleaseAddress{
			Network: req.GetName(), Ip: ip.String()}}}, req.GetRequestId(), method, target))
	}
	var n *ferryv1.L3Network
	if err == nil {
		n, err = lookup(s.a.ledger.L3Network, req.GetName(), "L3 network")
	}
	return reply(ctx, s.a, &ferryv1.ReleaseL3NetworkAddressResponse{L3Network: n}, err)
}

// checkReserved refuses to release an address the network does not
// reserve (the ledger checks again when the release applies).
func checkReserved(a *API, network, ip string) error {
	n, ok := a.ledger.L3Network(network)
	if !ok {
		return notFound("name", network)
	}
	var held []string
	for _, r := range n.GetReservations() {
		if r.GetIp() == ip {
			return nil
		}
		held = append(held, r.GetIp())
	}
	if len(held) == 0 {
		held = []string{"none"}
	}
	return precondition("ip", "%s reserves no address %s for a migrated VM (it reserves %s)", network, ip, strings.Join(held, ", "))
}

func (s *targetInventoryService) DeleteL3Network(ctx context.Context, req *ferryv1.DeleteL3NetworkRequest) (*emptypb.Empty, error) {
	err := s.a.deleteResource(ctx, req.GetName(), colNetworks, func(d *ledgerv1.DeleteResource) *ledgerv1.Command {
		return &ledgerv1.Command{Op: &ledgerv1.Command_DeleteL3Network{DeleteL3Network: d}}
	})
	return reply(ctx, s.a, &emptypb.Empty{}, err)
}
