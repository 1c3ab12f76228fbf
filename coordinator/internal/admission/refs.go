package admission

import (
	"fmt"
	"net/netip"

	"github.com/ferry-v2v/ferry/coordinator/internal/validate"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// batchRefs are the resources a batch refers to, read once.
type batchRefs struct {
	source   *ferryv1.Source
	server   *ferryv1.MigrationServer
	networks map[string]*ferryv1.L3Network
}

// resolveBatch reads the source and server; precheck compares their types.
func (a *Admission) resolveBatch(req *ferryv1.CreateMigrationJobsRequest) (*batchRefs, error) {
	src, ok := a.ledger.Source(req.GetSource())
	if !ok {
		return nil, validate.NotFound("source", req.GetSource())
	}
	srv, ok := a.ledger.MigrationServer(req.GetMigrationServer())
	if !ok {
		return nil, validate.NotFound("migration_server", req.GetMigrationServer())
	}
	return &batchRefs{source: src, server: srv, networks: map[string]*ferryv1.L3Network{}}, nil
}

// checkTargetRefs checks what job i's target refers to: existence (NOT_FOUND)
// and consistency with the target cluster (INVALID_ARGUMENT).
func (a *Admission) checkTargetRefs(i int, t *ferryv1.TargetVm, refs *batchRefs) error {
	p := fmt.Sprintf("jobs[%d].target", i)
	if _, ok := a.ledger.Cluster(t.GetCluster()); !ok {
		return validate.NotFound(p+".cluster", t.GetCluster())
	}
	ps, ok := a.ledger.PrimaryStorage(t.GetPrimaryStorage())
	if !ok {
		return validate.NotFound(p+".primary_storage", t.GetPrimaryStorage())
	}
	if ps.GetCluster() != t.GetCluster() {
		return validate.Invalid(p+".primary_storage", "%s belongs to %s, not to the target cluster %s", ps.GetName(), ps.GetCluster(), t.GetCluster())
	}
	if err := a.checkTargetHost(p, t, ps, refs.server); err != nil {
		return err
	}
	for j, nic := range t.GetNics() {
		if err := a.checkNICRefs(fmt.Sprintf("%s.nics[%d]", p, j), t, nic, refs); err != nil {
			return err
		}
	}
	return nil
}

func (a *Admission) checkTargetHost(p string, t *ferryv1.TargetVm, ps *ferryv1.PrimaryStorage, srv *ferryv1.MigrationServer) error {
	if t.GetHost() == "" {
		return nil
	}
	h, ok := a.ledger.Host(t.GetHost())
	if !ok {
		return validate.NotFound(p+".host", t.GetHost())
	}
	if h.GetCluster() != t.GetCluster() {
		return validate.Invalid(p+".host", "%s is in cluster %q, not in the target cluster %s", h.GetName(), h.GetCluster(), t.GetCluster())
	}
	return nil
}

func (a *Admission) checkNICRefs(np string, t *ferryv1.TargetVm, nic *ferryv1.TargetNic, refs *batchRefs) error {
	n, ok := refs.networks[nic.GetL3Network()]
	if !ok {
		if n, ok = a.ledger.L3Network(nic.GetL3Network()); !ok {
			return validate.NotFound(np+".l3_network", nic.GetL3Network())
		}
		refs.networks[n.GetName()] = n
	}
	if n.GetCluster() != t.GetCluster() {
		return validate.Invalid(np+".l3_network", "%s belongs to %s, not to the target cluster %s", n.GetName(), n.GetCluster(), t.GetCluster())
	}
	if nic.GetIp() == "" {
		return nil
	}
	ip, _ := validate.ParseIP(nic.GetIp())
	r := rangeOf(n)
	switch {
	case !r.contains(ip):
		return validate.Invalid(np+".ip", "%s is outside the range %s-%s of %s", ip, n.GetIpRangeStart(), n.GetIpRangeEnd(), n.GetName())
	case !r.usable(ip):
		return validate.Invalid(np+".ip", "%s is the gateway, network or broadcast address of %s", ip, n.GetName())
	}
	return nil
}

// ipRange is an L3 network's allocation range.
type ipRange struct {
	start, end netip.Addr
	gateway    netip.Addr
	subnet     netip.Prefix
}

func rangeOf(n *ferryv1.L3Network) ipRange {
	r := ipRange{}
	r.start, _ = validate.ParseIP(n.GetIpRangeStart())
	r.end, _ = validate.ParseIP(n.GetIpRangeEnd())
	r.gateway, _ = validate.ParseIP(n.GetGateway())
	r.subnet = netip.PrefixFrom(r.start, int(n.GetPrefixLength())).Masked()
	return r
}

func (r ipRange) contains(a netip.Addr) bool {
	return r.start.IsValid() && a.BitLen() == r.start.BitLen() && !a.Less(r.start) && !r.end.Less(a)
}

// usable says whether a may be handed to a VM: not the gateway, nor the
// network or broadcast address of an IPv4 subnet larger than /31.
func (r ipRange) usable(a netip.Addr) bool {
	if a == r.gateway {
		return false
	}
	if a.Is4() && r.subnet.IsValid() && r.subnet.Bits() < 31 {
		if a == r.subnet.Addr() || a == lastAddr(r.subnet) {
			return false
		}
	}
	return true
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 1 << (7 - i%8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}
