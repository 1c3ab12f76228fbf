package admission

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/ferry-v2v/ferry/coordinator/internal/validate"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// allocator hands out addresses for one batch. The caller holds
// Admission.allocMu from allocation until the proposal is applied, so the
// ledger's used addresses plus this batch's are all that is taken. It asks
// the ledger about each address it considers (ledger.AddressHolder) rather
// than copying every address a network holds, so a batch costs the same
// whatever the number of jobs in the ledger. It also
// skips an address that the target libvirt network already reserves for
// another MAC in a static DHCP host entry, as the agents of the network's
// cluster report them: the target VM could not get it.
type allocator struct {
	a     *Admission
	nets  map[string]*ferryv1.L3Network
	taken map[string]map[netip.Addr]string // network → address → job of this batch
	next  map[string]netip.Addr            // network → where firstFree looks next
	hosts []*ferryv1.Host                  // connected, read once
	dhcp  map[string]map[netip.Addr]dhcpEntry
	// hints are where the held addresses from each range's start end, as
	// a previous batch found them, and freed the ledger's AddressesFreed
	// when this batch began; nil when the allocator keeps no hints
	// (a preview's, which runs without Admission.allocMu).
	hints map[string]prefixHint
	freed uint64
	runs  map[string]*heldRun
}

// prefixHint says that, when the ledger's AddressesFreed was freed,
// every usable address of the range that starts at start and lies before
// end was held, except perhaps gaps (sorted): allocation may look at the
// gaps, then begin its search at end. Addresses only become free through
// what AddressesFreed counts, and the ledger says which ones it counted
// (AddressesFreedSince), so a batch in a ledger of 10,000 jobs does not
// walk past 10,000 held addresses, also after jobs failed or were
// cancelled or deleted.
type prefixHint struct {
	freed      uint64
	start, end netip.Addr
	gaps       []netip.Addr
}

// heldRun is what firstFree knows of a network during one batch: every
// usable address from the range's start to end is held in the ledger
// except perhaps gaps. open says whether every usable address that
// firstFree has looked at from end on was held in the ledger too, so end
// may move past it.
type heldRun struct {
	end  netip.Addr
	gaps []netip.Addr
	open bool
}

// first is where a search of the range begins: the first gap, else end.
func (h *heldRun) first() netip.Addr {
	if len(h.gaps) > 0 {
		return h.gaps[0]
	}
	return h.end
}

// after is the address a search looks at after a: within the run only
// its gaps, then every address from end on.
func (h *heldRun) after(a netip.Addr) netip.Addr {
	next := a.Next()
	if !next.IsValid() || !next.Less(h.end) {
		return next
	}
	for _, g := range h.gaps {
		if !g.Less(next) {
			return g
		}
	}
	return h.end
}

// held records that the ledger holds a, which firstFree looked at.
func (h *heldRun) held(a netip.Addr) {
	if a.Less(h.end) {
		h.gaps = slices.DeleteFunc(h.gaps, func(g netip.Addr) bool { return g == a })
		return
	}
	if h.open {
		h.end = a.Next()
	}
}

// heldRun returns what the hints say of network's range r for this
// batch, brought up to date with the addresses the ledger freed since;
// nothing (end at the range's start) for a preview or when the ledger no
// longer knows what was freed.
func (al *allocator) heldRun(network string, r ipRange) *heldRun {
	if h, ok := al.runs[network]; ok {
		return h
	}
	run := &heldRun{end: r.start, open: al.hints != nil}
	if h, ok := al.hints[network]; ok && h.start == r.start {
		gaps, known := slices.Clone(h.gaps), h.freed == al.freed
		if !known {
			var ips []string
			ips, known = al.a.ledger.AddressesFreedSince(network, h.freed)
			for _, s := range ips {
				if ip, ok := validate.ParseIP(s); ok && !ip.Less(r.start) && ip.Less(h.end) {
					gaps = append(gaps, ip)
				}
			}
			slices.SortFunc(gaps, netip.Addr.Compare)
			gaps = slices.Compact(gaps)
		}
		if known {
			run.end, run.gaps = h.end, gaps
		}
	}
	al.runs[network] = run
	return run
}

// keep stores what this batch knows of network's range as its hint.
func (al *allocator) keep(network string, r ipRange, run *heldRun) {
	if al.hints != nil {
		al.hints[network] = prefixHint{freed: al.freed, start: r.start, end: run.end, gaps: slices.Clone(run.gaps)}
	}
}

// remember has the allocator start where hints say the held addresses
// end, and keep hints up to date; the caller holds Admission.allocMu.
func (al *allocator) remember(hints map[string]prefixHint) {
	al.freed = al.a.ledger.AddressesFreed() // before any address is looked at
	al.hints = hints
}

// dhcpEntry is a static DHCP host entry of a libvirt network on a host.
type dhcpEntry struct{ mac, name, host, network string }

func (a *Admission) newAllocator(nets map[string]*ferryv1.L3Network) *allocator {
	return &allocator{a: a, nets: nets, taken: map[string]map[netip.Addr]string{}, next: map[string]netip.Addr{},
		dhcp: map[string]map[netip.Addr]dhcpEntry{}, runs: map[string]*heldRun{}}
}

// holder says who holds ip on network: a job or reservation of the
// ledger, or a NIC of this batch ("jobs[0].target.nics[1].ip").
func (al *allocator) holder(network string, ip netip.Addr) (string, bool) {
	if h, ok := al.taken[network][ip]; ok {
		return h, true
	}
	return al.a.ledger.AddressHolder(network, ip.String())
}

// take records that a NIC of this batch holds ip on network.
func (al *allocator) take(network string, ip netip.Addr, field string) {
	if al.taken[network] == nil {
		al.taken[network] = map[netip.Addr]string{}
	}
	al.taken[network][ip] = field
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
			field := fmt.Sprintf("jobs[%d].target.nics[%d].ip", i, k)
			holder, ok := al.holder(nic.GetL3Network(), ip)
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
			al.take(nic.GetL3Network(), ip, field)
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
			al.take(nic.GetL3Network(), ip, fmt.Sprintf("jobs[%d].target.nics[%d].ip", i, k))
		}
	}
	return nil
}

// firstFree is the first address of the network's range that nothing
// holds and no DHCP host entry reserves for a MAC other than mac.
func (al *allocator) firstFree(network, mac string) (netip.Addr, bool) {
	r := rangeOf(al.nets[network])
	run := al.heldRun(network, r)
	defer al.keep(network, r, run)
	start, ok := al.next[network]
	if !ok {
		start = run.first()
	}
	var skipped netip.Addr // the first address left for another MAC
	for a := start; a.IsValid() && !r.end.Less(a); a = run.after(a) {
		if !r.usable(a) {
			continue
		}
		if holder, taken := al.holder(network, a); taken {
			if strings.HasPrefix(holder, "jobs[") {
				run.open = run.open && a.Less(run.end)
			} else {
				run.held(a)
			}
			continue
		}
		run.open = run.open && a.Less(run.end)
		if al.reservedFor(network, a, mac) != "" {
			if !skipped.IsValid() {
				skipped = a // a later NIC of the batch may have its MAC
			}
			continue
		}
		al.next[network] = run.after(a)
		if skipped.IsValid() {
			al.next[network] = skipped
		}
		return a, true
	}
	return netip.Addr{}, false
}
