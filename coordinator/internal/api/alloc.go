package api

import (
	"fmt"
	"net/netip"
	"strings"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// allocator hands out addresses for one batch. The caller holds
// API.allocMu from allocation until the proposal is applied, so the
// ledger's used addresses plus this batch's are all that is taken.
type allocator struct {
	a     *API
	nets  map[string]*ferryv1.L3Network
	taken map[string]map[netip.Addr]string // network → address → holder
	next  map[string]netip.Addr            // network → where firstFree looks next
}

func (a *API) newAllocator(nets map[string]*ferryv1.L3Network) *allocator {
	return &allocator{a: a, nets: nets, taken: map[string]map[netip.Addr]string{}, next: map[string]netip.Addr{}}
}

// held returns the addresses taken on a network: by jobs in the ledger,
// then by this batch.
func (al *allocator) held(network string) map[netip.Addr]string {
	if m, ok := al.taken[network]; ok {
		return m
	}
	m := map[netip.Addr]string{}
	for ip, job := range al.a.ledger.UsedAddresses(network) {
		if a, ok := parseIP(ip); ok {
			m[a] = job
		}
	}
	al.taken[network] = m
	return m
}

// allocate records the addresses the batch asks for, then gives every NIC
// without one the first free address of its network's range.
func (al *allocator) allocate(jobs []*ferryv1.MigrationJob) error {
	for i, j := range jobs {
		for k, nic := range j.GetTarget().GetNics() {
			if nic.GetIp() == "" {
				continue
			}
			ip, _ := parseIP(nic.GetIp())
			held := al.held(nic.GetL3Network())
			field := fmt.Sprintf("jobs[%d].target.nics[%d].ip", i, k)
			holder, ok := held[ip]
			switch {
			case ok && strings.HasPrefix(holder, "jobs["):
				return invalid(field, "%s on %s is also given to %s", ip, nic.GetL3Network(), holder)
			case ok:
				return precondition(field, "%s on %s is already held by %s; pick another address or leave ip empty to have one allocated",
					ip, nic.GetL3Network(), holder)
			}
			held[ip] = field
		}
	}
	for i, j := range jobs {
		for k, nic := range j.GetTarget().GetNics() {
			if nic.GetIp() != "" {
				continue
			}
			ip, ok := al.firstFree(nic.GetL3Network())
			if !ok {
				n := al.nets[nic.GetL3Network()]
				return precondition(fmt.Sprintf("jobs[%d].target.nics[%d].l3_network", i, k),
					"no free address left in %s (range %s-%s); widen the range or delete finished jobs that hold addresses",
					n.GetName(), n.GetIpRangeStart(), n.GetIpRangeEnd())
			}
			nic.Ip = ip.String()
			al.held(nic.GetL3Network())[ip] = fmt.Sprintf("jobs[%d].target.nics[%d].ip", i, k)
		}
	}
	return nil
}

func (al *allocator) firstFree(network string) (netip.Addr, bool) {
	r := rangeOf(al.nets[network])
	held := al.held(network)
	start, ok := al.next[network]
	if !ok {
		start = r.start
	}
	for a := start; a.IsValid() && !r.end.Less(a); a = a.Next() {
		if _, taken := held[a]; !taken && r.usable(a) {
			al.next[network] = a.Next()
			return a, true
		}
	}
	return netip.Addr{}, false
}
