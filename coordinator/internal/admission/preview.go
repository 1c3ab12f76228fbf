package admission

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/big"
	"net/netip"
	"slices"

	"google.golang.org/grpc/codes"

	"github.com/ferry-v2v/ferry/coordinator/internal/placement"
	"github.com/ferry-v2v/ferry/coordinator/internal/validate"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// Preview checks a batch as Create does and says what it would use,
// without writing anything but the source syncs it needed (as a sync
// would): steps 1 to 7. A request that Create would refuse as malformed
// (INVALID_ARGUMENT, NOT_FOUND) is refused the same way; what Create
// would refuse as FAILED_PRECONDITION (pre-checks, addresses) is listed
// in failed_checks.
func (a *Admission) Preview(ctx context.Context, p *ferryv1.PreviewMigrationJobsRequest) (*ferryv1.PreviewMigrationJobsResponse, error) {
	req := &ferryv1.CreateMigrationJobsRequest{Source: p.GetSource(), MigrationServer: p.GetMigrationServer(),
		Jobs: p.GetJobs(), NetworkMappingGroup: p.GetNetworkMappingGroup()}
	syncs := a.newBatchSyncs()
	req, notes, err := a.fillBatch(ctx, req, false, syncs)
	if err != nil {
		return nil, err
	}
	b, err := a.prepare(ctx, req, false, syncs)
	if err != nil {
		return nil, err
	}
	if err := syncs.record(ctx); err != nil {
		return nil, err
	}
	lines, jobs := b.failed, b.jobs
	notes = append(notes, a.keepSourceState(b.refs.source.GetName(), jobs)...)
	notes = append(notes, a.copyMethodNotes(b.refs.source, jobs)...)
	// The allocator only reads the ledger; what it hands out here is what
	// create would hand out if nothing changes in between.
	if err := a.newAllocator(b.refs.networks).allocate(jobs); err != nil {
		var fe *validate.FieldError
		if !errors.As(err, &fe) || fe.Code != codes.FailedPrecondition {
			return nil, err
		}
		lines = append(lines, fe.Error())
	}
	// 6b: host placement, before capacity counts what the chosen hosts
	// give. A host that does not exist or is not of the cluster is refused
	// as create refuses it; one that cannot take the VM now is a line.
	for _, err := range a.place(b.refs, jobs) {
		var fe *validate.FieldError
		switch {
		case err == nil:
		case errors.As(err, &fe) && fe.Code == codes.FailedPrecondition:
			lines = append(lines, fe.Error())
		default:
			return nil, err
		}
	}
	for _, j := range jobs {
		j.Name = ""
	}
	usages := a.usages(b.refs, jobs) // 7
	fits := len(lines) == 0
	for _, u := range usages {
		fits = fits && (!u.GetKnown() || u.GetFits())
	}
	return &ferryv1.PreviewMigrationJobsResponse{Jobs: jobs, Usages: usages, FailedChecks: lines, Fits: fits, Notes: notes}, nil
}

// usages adds up what the batch takes of each chosen host's CPUs and
// memory (and, for local storage, space), each shared primary storage's
// space and each L3 network's addresses, in the order the batch first
// names them, and of its migration server's cache.
func (a *Admission) usages(refs *batchRefs, jobs []*ferryv1.MigrationJob) []*ferryv1.PreviewUsage {
	var clusters, storages, networks []string
	for _, j := range jobs {
		t := j.GetTarget()
		clusters = appendNew(clusters, t.GetCluster())
		storages = appendNew(storages, t.GetPrimaryStorage())
		for _, n := range t.GetNics() {
			networks = appendNew(networks, n.GetL3Network())
		}
	}
	c := a.newResources(refs.server)
	ps := map[string]*ferryv1.PrimaryStorage{}
	for _, name := range storages {
		ps[name], _ = a.ledger.PrimaryStorage(name) // checkTargetRefs found each
	}
	local := func(name string) bool {
		return ps[name].GetType() == ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_LOCAL
	}
	planned := placement.PlannedOf(c.active, a.serverHosts())
	hosts := placedHosts(jobs)
	var out []*ferryv1.PreviewUsage
	for _, h := range hosts {
		out = append(out, c.hostCompute(h, jobs, planned)...)
	}
	for _, name := range storages {
		if !local(name) {
			out = append(out, c.disk(ps[name], jobs))
			continue
		}
		for _, h := range hosts {
			if placedOn(jobs, h, name) {
				out = append(out, c.hostDisk(ps[name], h, jobs, planned))
			}
		}
	}
	for _, n := range networks {
		out = append(out, a.addresses(refs.networks[n], jobs))
	}
	return append(out, c.cache(jobs))
}

func appendNew(list []string, s string) []string {
	if s == "" || slices.Contains(list, s) {
		return list
	}
	return append(list, s)
}

// settle fills in whether a usage fits once requested and available are
// known.
func settle(u *ferryv1.PreviewUsage) *ferryv1.PreviewUsage {
	u.Fits = u.Known && u.Requested <= u.Available
	if !u.Known {
		u.Available = 0
	}
	return u
}

// addresses is what the batch takes of an L3 network's range: one address
// per NIC, against the usable addresses of the range (not the gateway,
// network or broadcast address) that no job holds, no migrated VM keeps
// (reservations) and no DHCP host entry of its libvirt network names.
func (a *Admission) addresses(n *ferryv1.L3Network, jobs []*ferryv1.MigrationJob) *ferryv1.PreviewUsage {
	u := &ferryv1.PreviewUsage{Kind: ferryv1.PreviewResourceKind_PREVIEW_RESOURCE_KIND_IP_ADDRESSES, Resource: n.GetName()}
	for _, j := range jobs {
		for _, nic := range j.GetTarget().GetNics() {
			if nic.GetL3Network() == n.GetName() {
				u.Requested++
			}
		}
	}
	r := rangeOf(n)
	size, ok := r.usableCount()
	if !ok {
		u.Note = fmt.Sprintf("the range %s-%s of %s cannot be read", n.GetIpRangeStart(), n.GetIpRangeEnd(), n.GetName())
		return settle(u)
	}
	held, dhcp := 0, 0
	used := a.ledger.UsedAddresses(n.GetName())
	for ip := range used {
		if a, ok := validate.ParseIP(ip); ok && r.contains(a) && r.usable(a) {
			held++
		}
	}
	for ip := range a.newAllocator(map[string]*ferryv1.L3Network{n.GetName(): n}).dhcpHosts(n.GetName()) {
		if _, ok := used[ip.String()]; !ok && r.contains(ip) && r.usable(ip) {
			dhcp++
		}
	}
	u.Known, u.Available = true, size-int64(held+dhcp)
	u.Note = fmt.Sprintf("%d usable addresses in %s-%s, %d held by jobs or reserved for migrated VMs", size, n.GetIpRangeStart(), n.GetIpRangeEnd(), held)
	if dhcp > 0 {
		u.Note += fmt.Sprintf(", %d in DHCP host entries of libvirt network %s", dhcp, n.GetLibvirtNetwork())
	}
	return settle(u)
}

// usableCount is how many addresses of the range may be handed out,
// capped at the largest int64 for wide IPv6 ranges.
func (r ipRange) usableCount() (int64, bool) {
	if !r.start.IsValid() || !r.end.IsValid() || r.end.Less(r.start) || r.start.BitLen() != r.end.BitLen() {
		return 0, false
	}
	s, e := r.start.As16(), r.end.As16()
	n := new(big.Int).Sub(new(big.Int).SetBytes(e[:]), new(big.Int).SetBytes(s[:]))
	n.Add(n, big.NewInt(1))
	for _, x := range r.unusable() {
		if r.contains(x) {
			n.Sub(n, big.NewInt(1))
		}
	}
	if !n.IsInt64() {
		return math.MaxInt64, true
	}
	return n.Int64(), true
}

// unusable are the addresses usable refuses: the gateway, and the network
// and broadcast addresses of an IPv4 subnet larger than /31.
func (r ipRange) unusable() []netip.Addr {
	out := []netip.Addr{}
	if r.gateway.IsValid() {
		out = append(out, r.gateway)
	}
	if r.start.Is4() && r.subnet.IsValid() && r.subnet.Bits() < 31 {
		for _, x := range []netip.Addr{r.subnet.Addr(), lastAddr(r.subnet)} {
			if x != r.gateway {
				out = append(out, x)
			}
		}
	}
	return out
}
