package admission

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/ferry-v2v/ferry/coordinator/internal/validate"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// allocator hands out addresses for one batch. The caller holds
// Admission.allocMu from allocation until the proposal is applied, so the
// ledger's used addresses plus this batch's are all that is taken. It also
// skips an address that the target libvirt network already reserves for
// another MAC in a static DHCP host entry, as the agents of the network's
// cluster report them: the target VM could not get it.
type allocator struct {
	a     *Admission
	nets  map[string]*ferryv1.L3Network
	taken map[string]map[netip.Addr]string // network → address → holder
	next  map[string]netip.Addr            // network → where firstFree looks next
	hosts []*ferryv1.Host                  // connected, read once
	dhcp  map[string]map[netip.Addr]dhcpEntry
}

// dhcpEntry is a static DHCP host entry of a libvirt network on a host.
type dhcpEntry struct{ mac, name, host, network string }

func (a *Admission) newAllocator(nets map[string]*ferryv1.L3Network) *allocator {
	return &allocator{a: a, nets: nets, taken: map[string]map[netip.Addr]string{}, next: map[string]netip.Addr{},
		dhcp: map[string]map[netip.Addr]dhcpEntry{}}
}

// held returns the addresses taken on a network: by jobs and reservations
// in the ledger, then by this batch.
func (al *allocator) held(network string) map[netip.Addr]string {
	if m, ok := al.taken[network]; ok {
		return m
	}
	m := map[netip.Addr]string{}
	for ip, job := range al.a.ledger.UsedAddresses(network) {
		if a, ok := validate.ParseIP(ip); ok {
			m[a] = job
		}
	}
	al.taken[network] = m
	return m
}

// dhcpHosts returns the static DHCP host entries of an L3 network's
// libvirt network on the connected hosts of its cluster; none for a
// bridge.
func (al *allocator) dhcpHosts(network string) map[netip.Addr]dhcpEntry {
	if m, ok := al.dhcp[network]; ok {
		return m
	}
	n := al.nets[network]
	if n == nil {
		n, _ = al.a.ledger.L3Network(network)
	}
	if al.hosts == nil {
		al.hosts = al.a.connectedHosts()
	}
	m := map[netip.Addr]dhcpEntry{}
	for _, h := range al.hosts {
		if n.GetLibvirtNetwork() == "" || h.GetCluster() != n.GetCluster() {
			continue
		}
		for _, ln := range h.GetFacts().GetLibvirtNetworks() {
			if ln.GetName() != n.GetLibvirtNetwork() {
				continue
			}
			for _, d := range ln.GetDhcpHosts() {
				if ip, ok := validate.ParseIP(d.GetIp()); ok {
					m[ip] = dhcpEntry{mac: strings.ToLower(d.GetMac()), name: d.GetName(), host: h.GetName(), network: ln.GetName()}
				}
			}
		}
	}
	al.dhcp[network] = m
	return m
}

// reservedFor says who else the network's DHCP hosts reserve ip for, ""
// when nobody or mac itself.
func (al *allocator) reservedFor(network string, ip netip.Addr, mac string) string {
	d, ok := al.dhcpHosts(network)[ip]
	switch {
	case !ok || d.mac != "" && d.mac == strings.ToLower(mac):
		return ""
	case d.mac == "": // an IPv6 entry names a DHCP client id, not a MAC
		return fmt.Sprintf("libvirt network %s on %s reserves it for %q", d.network, d.host, d.name)
	}
	return fmt.Sprintf("libvirt network %s on %s reserves it for MAC %s", d.network, d.host, d.mac)
}

// allocate records the addresses the batch asks for, then gives every NIC
// without one the first free address of its network's range.
func (al *allocator) allocate(jobs []*ferryv1.MigrationJob) error {
	for i, j := range jobs {
		for k, nic := range j.GetTarget().GetNics() {
			if nic.GetIp() == "" {
				continue
			}
			ip, _ := validate.ParseIP(nic.GetIp())
			held := al.held(nic.GetL3Network())
			field := fmt.Sprintf("jobs[%d].target.nics[%d].ip", i, k)
			holder, ok := held[ip]
			switch {
			case ok && strings.HasPrefix(holder, "jobs["):
				return validate.Invalid(field, "%s on %s is also given to %s", ip, nic.GetL3Network(), holder)
			case ok:
				return validate.Precondition(field, "%s on %s is already held by %s; pick another address or leave ip empty to have one allocated",
					ip, nic.GetL3Network(), holder)
			}
			if other := al.reservedFor(nic.GetL3Network(), ip, nic.GetMac()); other != "" {
				return validate.Precondition(field, "%s on %s: %s; pick another address or leave ip empty to have one allocated",
					ip, nic.GetL3Network(), other)
			}
			held[ip] = field
		}
	}
	for i, j := range jobs {
		for k, nic := range j.GetTarget().GetNics() {
			if nic.GetIp() != "" {
				continue
			}
			ip, ok := al.firstFree(nic.GetL3Network(), nic.GetMac())
			if !ok {
				n := al.nets[nic.GetL3Network()]
				return validate.Precondition(fmt.Sprintf("jobs[%d].target.nics[%d].l3_network", i, k),
					"no free address left in %s (range %s-%s); widen the range or delete finished jobs that hold addresses",
					n.GetName(), n.GetIpRangeStart(), n.GetIpRangeEnd())
			}
			nic.Ip = ip.String()
			al.held(nic.GetL3Network())[ip] = fmt.Sprintf("jobs[%d].target.nics[%d].ip", i, k)
		}
	}
	return nil
}

// firstFree is the first address of the network's range that nothing
// holds and no DHCP host entry reserves for a MAC other than mac.
func (al *allocator) firstFree(network, mac string) (netip.Addr, bool) {
	r := rangeOf(al.nets[network])
	held := al.held(network)
	start, ok := al.next[network]
	if !ok {
		start = r.start
	}
	var skipped netip.Addr // the first address left for another MAC
	for a := start; a.IsValid() && !r.end.Less(a); a = a.Next() {
		if _, taken := held[a]; taken || !r.usable(a) {
			continue
		}
		if al.reservedFor(network, a, mac) != "" {
			if !skipped.IsValid() {
				skipped = a // a later NIC of the batch may have its MAC
			}
			continue
		}
		al.next[network] = a.Next()
		if skipped.IsValid() {
			al.next[network] = skipped
		}
		return a, true
	}
	return netip.Addr{}, false
}
