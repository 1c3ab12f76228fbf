package ledger

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// The address index lists, by L3 network and address, the jobs whose
// target NICs were given the address, whatever their state; the readers
// below keep those that hold it (not FAILED nor CANCELLED). A job's NICs
// never change once it is created, so the index changes only when jobs
// are created, deleted or restored, and finding who holds an address
// costs the same with 100 jobs in the ledger as with 10,000.

// AddressesFreed counts the changes that may have freed an address on
// some network since this ledger was made: a job that failed or was
// cancelled or deleted, a released reservation, a deleted network, a
// restored snapshot. While it stays the same, every address held stays
// held; an allocator may remember where the held addresses end, and ask
// AddressesFreedSince which ones may have been freed when it changed.
func (l *Ledger) AddressesFreed() uint64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.freed
}

// freedLogCap bounds how many freed addresses the ledger remembers per
// network; an allocator asking about older ones starts from scratch.
const freedLogCap = 4096

// freedAddr is an address that may have been freed, with the value of
// AddressesFreed that counted it.
type freedAddr struct {
	seq uint64
	ip  string
}

// AddressesFreedSince returns the addresses of an L3 network that may
// have been freed since AddressesFreed returned since, oldest first, and
// whether the ledger still knows them all: not after a snapshot was
// restored or the network deleted, nor when more than it keeps were freed
// on the network since. Every other address held then is held still.
func (l *Ledger) AddressesFreedSince(network string, since uint64) ([]string, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if since < l.freedAll || since < l.freedTrimmed[network] {
		return nil, false
	}
	log := l.freedLog[network]
	i, _ := slices.BinarySearchFunc(log, since+1, func(f freedAddr, seq uint64) int { return cmp.Compare(f.seq, seq) })
	out := make([]string, 0, len(log)-i)
	for _, f := range log[i:] {
		out = append(out, f.ip)
	}
	return out, true
}

// freeJobAddresses counts a change that may free the addresses of j's
// NICs. The caller holds the lock.
func (l *Ledger) freeJobAddresses(j *ferryv1.MigrationJob) {
	l.freed++
	for _, nic := range j.GetTarget().GetNics() {
		if nic.GetIp() != "" {
			l.logFreed(nic.GetL3Network(), nic.GetIp())
		}
	}
}

// logFreed remembers that ip may have been freed on network when
// AddressesFreed reached its current value.
func (l *Ledger) logFreed(network, ip string) {
	log := append(l.freedLog[network], freedAddr{seq: l.freed, ip: ip})
	if len(log) > freedLogCap {
		drop := len(log) - freedLogCap/2
		l.freedTrimmed[network] = log[drop-1].seq
		log = slices.Clone(log[drop:])
	}
	l.freedLog[network] = log
}

// freeAll counts a change that may free any address (a restore, a
// deleted network): AddressesFreedSince knows nothing from before it.
// The caller holds the lock.
func (l *Ledger) freeAll() {
	l.freed++
	l.freedAll = l.freed
	l.freedLog = map[string][]freedAddr{}
	l.freedTrimmed = map[string]uint64{}
}

// indexJob adds j's addresses to the index, or removes them.
func (l *Ledger) indexJob(j *ferryv1.MigrationJob, add bool) {
	for _, nic := range j.GetTarget().GetNics() {
		if nic.GetIp() == "" {
			continue
		}
		byIP := l.addrs[nic.GetL3Network()]
		if byIP == nil {
			byIP = map[string][]string{}
			l.addrs[nic.GetL3Network()] = byIP
		}
		names := slices.DeleteFunc(byIP[nic.GetIp()], func(n string) bool { return n == j.GetName() })
		if add {
			names = append(names, j.GetName())
		}
		if len(names) == 0 {
			delete(byIP, nic.GetIp())
			continue
		}
		byIP[nic.GetIp()] = names
	}
}

// indexAllJobs rebuilds the index from l.jobs.
func (l *Ledger) indexAllJobs() {
	l.addrs = map[string]map[string][]string{}
	for _, j := range l.jobs {
		l.indexJob(j, true)
	}
}

// holds says whether job name, if it exists, holds its addresses.
func (l *Ledger) holds(name string) bool {
	j, ok := l.jobs[name]
	return ok && j.GetState() != stateFailed && j.GetState() != stateCancelled
}

// AddressHolder says who holds ip on an L3 network: an unfinished or
// succeeded job (its name), or a reservation for the VM of a deleted job.
func (l *Ledger) AddressHolder(network, ip string) (string, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.holder(network, ip, "")
}

// holder is AddressHolder leaving out job except.
func (l *Ledger) holder(network, ip, except string) (string, bool) {
	for _, name := range l.addrs[network][ip] {
		if name != except && l.holds(name) {
			return name, true
		}
	}
	for _, r := range l.networks[network].GetReservations() {
		if r.GetIp() == ip {
			return reservationHolder(r), true
		}
	}
	return "", false
}

// UsedAddresses returns the addresses unfinished and succeeded jobs hold
// on an L3 network, and those the network reserves for the VMs of deleted
// jobs, each with its holder.
func (l *Ledger) UsedAddresses(network string) map[string]string {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.usedAddresses(network)
}

// usedAddresses is UsedAddresses with l.mu held.
func (l *Ledger) usedAddresses(network string) map[string]string {
	used := map[string]string{}
	for _, r := range l.networks[network].GetReservations() {
		used[r.GetIp()] = reservationHolder(r)
	}
	for ip, names := range l.addrs[network] {
		for _, name := range names {
			if l.holds(name) {
				used[ip] = name
				break
			}
		}
	}
	return used
}

// HeldConflict says which field of n, a network changed by an update,
// would leave out an address in use (used, as UsedAddresses gives it) or
// make the gateway one, and why, naming the first such address; "" and
// nil when none would.
func HeldConflict(n *ferryv1.L3Network, used map[string]string) (field string, err error) {
	start, err1 := netip.ParseAddr(n.GetIpRangeStart())
	end, err2 := netip.ParseAddr(n.GetIpRangeEnd())
	if err1 != nil || err2 != nil || end.Less(start) {
		return "ip_range_start", fmt.Errorf("%w: the range %s-%s is not a range", ErrFailedPrecondition, n.GetIpRangeStart(), n.GetIpRangeEnd())
	}
	ips := make([]netip.Addr, 0, len(used))
	for ip := range used {
		if a, err := netip.ParseAddr(ip); err == nil {
			ips = append(ips, a)
		}
	}
	slices.SortFunc(ips, netip.Addr.Compare)
	for _, a := range ips {
		holder := used[a.String()]
		switch {
		case a.Less(start):
			field = "ip_range_start"
		case end.Less(a):
			field = "ip_range_end"
		case a.String() == n.GetGateway():
			return "gateway", fmt.Errorf("%w: %s is held by %s", ErrFailedPrecondition, a, holder)
		default:
			continue
		}
		return field, fmt.Errorf("%w: %s is held by %s and would fall outside the range %s-%s", ErrFailedPrecondition, a, holder, start, end)
	}
	return "", nil
}

func reservationHolder(r *ferryv1.AddressReservation) string {
	return fmt.Sprintf("VM %s (MAC %s), reserved when its job %s was deleted", r.GetVmName(), r.GetMac(), r.GetJob())
}
