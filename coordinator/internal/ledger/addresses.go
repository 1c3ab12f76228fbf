package ledger

import (
	"fmt"
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
// held; an allocator may remember where the held addresses end.
func (l *Ledger) AddressesFreed() uint64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.freed
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

func reservationHolder(r *ferryv1.AddressReservation) string {
	return fmt.Sprintf("VM %s (MAC %s), reserved when its job %s was deleted", r.GetVmName(), r.GetMac(), r.GetJob())
}
