package ledger

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// Cluster returns a copy of the named cluster.
func (l *Ledger) Cluster(name string) (*ferryv1.Cluster, bool) { return get(l, l.clusters, name) }

// Clusters lists all clusters by name.
func (l *Ledger) Clusters() []*ferryv1.Cluster {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return filtered(l.clusters, nil)
}

// PutCluster creates a cluster; a repeated request ID returns the first name.
func (l *Ledger) PutCluster(c *ferryv1.Cluster, requestID string, now time.Time) ([]string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return create(l, l.clusters, c, requestID, now, func() { c.CreateTime = timestamppb.New(now) })
}

// DeleteCluster deletes a cluster nothing refers to any more.
func (l *Ledger) DeleteCluster(name string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.deleteClusterRefusal(name); err != nil {
		return err
	}
	delete(l.clusters, name)
	return nil
}

// Host returns a copy of the named host.
func (l *Ledger) Host(name string) (*ferryv1.Host, bool) { return get(l, l.hosts, name) }

// Hosts lists the hosts, of one cluster when cluster is not empty.
func (l *Ledger) Hosts(cluster string) []*ferryv1.Host {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return filtered(l.hosts, func(h *ferryv1.Host) bool { return cluster == "" || h.GetCluster() == cluster })
}

// PutHost records a host and its facts as its agent reported them.
func (l *Ledger) PutHost(h *ferryv1.Host, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	h = clone(h)
	if old, ok := l.hosts[h.GetName()]; ok {
		h.CreateTime = old.GetCreateTime()
		// Maintenance is the operator's and pending cleanups the
		// leader's, not the agent's: a hello or a refresh of facts keeps
		// them.
		h.Maintenance = old.GetMaintenance()
		h.PendingCleanups = old.GetPendingCleanups()
	} else {
		h.CreateTime = timestamppb.New(now)
	}
	h.LastSeenTime = timestamppb.New(now)
	l.hosts[h.GetName()] = h
	l.sampleUsage(h, now)
}

// SetHostConnected records that a host's agent came or went.
func (l *Ledger) SetHostConnected(name string, connected bool, now time.Time) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	h, ok := l.hosts[name]
	if !ok {
		return fmt.Errorf("host %s: %w", name, ErrNotFound)
	}
	h = clone(h)
	h.Connected = connected
	h.LastSeenTime = timestamppb.New(now)
	l.hosts[name] = h
	return nil
}

// SetHostMaintenance puts a host into maintenance or takes it out.
func (l *Ledger) SetHostMaintenance(name string, on bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.hostRefusal(name); err != nil {
		return err
	}
	h := clone(l.hosts[name])
	h.Maintenance = on
	l.hosts[name] = h
	return nil
}

// SetPendingCleanup records the rollback host's agent owes job, stamped
// with now, or clears it when cleanup is nil.
func (l *Ledger) SetPendingCleanup(host, job string, cleanup *ferryv1.PendingCleanup, now time.Time) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.hostRefusal(host); err != nil {
		return err
	}
	h := clone(l.hosts[host])
	h.PendingCleanups = slices.DeleteFunc(h.PendingCleanups, func(c *ferryv1.PendingCleanup) bool { return c.GetJob() == job })
	if cleanup != nil {
		c := clone(cleanup)
		c.Job, c.CreateTime = job, timestamppb.New(now)
		h.PendingCleanups = append(h.PendingCleanups, c)
		slices.SortFunc(h.PendingCleanups, func(a, b *ferryv1.PendingCleanup) int { return strings.Compare(a.GetJob(), b.GetJob()) })
	}
	l.hosts[host] = h
	return nil
}

func (l *Ledger) hostRefusal(name string) error {
	if _, ok := l.hosts[name]; !ok {
		return fmt.Errorf("host %s: %w", name, ErrNotFound)
	}
	return nil
}

// PrimaryStorage returns a copy of the named primary storage.
func (l *Ledger) PrimaryStorage(name string) (*ferryv1.PrimaryStorage, bool) {
	return get(l, l.storages, name)
}

// PrimaryStorages lists primary storage, of one cluster when cluster is set.
func (l *Ledger) PrimaryStorages(cluster string) []*ferryv1.PrimaryStorage {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return filtered(l.storages, func(p *ferryv1.PrimaryStorage) bool { return cluster == "" || p.GetCluster() == cluster })
}

// VisitPrimaryStorages calls visit with each primary storage, in no order,
// until visit returns false. It does not copy: visit must neither keep nor
// change the storage, and must not call back into the ledger.
func (l *Ledger) VisitPrimaryStorages(visit func(*ferryv1.PrimaryStorage) bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	for _, p := range l.storages {
		if !visit(p) {
			return
		}
	}
}

// PutPrimaryStorage creates primary storage.
func (l *Ledger) PutPrimaryStorage(p *ferryv1.PrimaryStorage, requestID string, now time.Time) ([]string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.clusters[p.GetCluster()]; !ok {
		return nil, fmt.Errorf("cluster %s: %w", p.GetCluster(), ErrNotFound)
	}
	return create(l, l.storages, p, requestID, now, func() { p.CreateTime = timestamppb.New(now) })
}

// DeletePrimaryStorage deletes primary storage no unfinished job targets.
func (l *Ledger) DeletePrimaryStorage(name string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.deleteStorageRefusal(name); err != nil {
		return err
	}
	delete(l.storages, name)
	return nil
}

// L3Network returns a copy of the named network.
func (l *Ledger) L3Network(name string) (*ferryv1.L3Network, bool) { return get(l, l.networks, name) }

// L3Networks lists networks, of one cluster when cluster is set.
func (l *Ledger) L3Networks(cluster string) []*ferryv1.L3Network {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return filtered(l.networks, func(n *ferryv1.L3Network) bool { return cluster == "" || n.GetCluster() == cluster })
}

// PutL3Network creates an L3 network.
func (l *Ledger) PutL3Network(n *ferryv1.L3Network, requestID string, now time.Time) ([]string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.clusters[n.GetCluster()]; !ok {
		return nil, fmt.Errorf("cluster %s: %w", n.GetCluster(), ErrNotFound)
	}
	return create(l, l.networks, n, requestID, now, func() { n.CreateTime = timestamppb.New(now) })
}

// DeleteL3Network deletes a network no unfinished job uses.
func (l *Ledger) DeleteL3Network(name string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.deleteNetworkRefusal(name); err != nil {
		return err
	}
	if g := l.mappingGroupUsing(name); g != "" {
		return fmt.Errorf("%w: network mapping group %s maps to L3 network %s; change or delete it first", ErrFailedPrecondition, g, name)
	}
	delete(l.networks, name)
	l.freeAll()
	return nil
}

// ReleaseAddress returns an address a deleted job's VM kept on an L3
// network to the pool.
func (l *Ledger) ReleaseAddress(network, ip string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.releaseAddressRefusal(network, ip); err != nil {
		return err
	}
	n := clone(l.networks[network])
	n.Reservations = slices.DeleteFunc(n.Reservations, func(r *ferryv1.AddressReservation) bool { return r.GetIp() == ip })
	l.networks[network] = n
	l.freed++
	l.logFreed(network, ip)
	return nil
}

func (l *Ledger) releaseAddressRefusal(network, ip string) error {
	n, ok := l.networks[network]
	if !ok {
		return fmt.Errorf("L3 network %s: %w", network, ErrNotFound)
	}
	for _, r := range n.GetReservations() {
		if r.GetIp() == ip {
			return nil
		}
	}
	return fmt.Errorf("%w: L3 network %s reserves no address %s for a migrated VM; see its reservations", ErrFailedPrecondition, network, ip)
}

func usesNetwork(j *ferryv1.MigrationJob, network string) bool {
	for _, nic := range j.GetTarget().GetNics() {
		if nic.GetL3Network() == network {
			return true
		}
	}
	return false
}

// create stores v under its name after stamp has set its output fields,
// and records requestID; a request ID seen before returns its first names.
func create[T named](l *Ledger, m map[string]T, v T, requestID string, now time.Time, stamp func()) ([]string, error) {
	if names, ok := l.seenRequest(requestID); ok {
		return names, nil
	}
	name := v.GetName()
	if _, ok := m[name]; ok {
		return nil, fmt.Errorf("%s: %w", name, ErrExists)
	}
	stamp()
	m[name] = v
	l.recordRequest(requestID, []string{name}, now)
	return []string{name}, nil
}

func (l *Ledger) seenRequest(id string) ([]string, bool) {
	if id == "" {
		return nil, false
	}
	r, ok := l.requests[id]
	if !ok {
		return nil, false
	}
	return append([]string(nil), r.GetNames()...), true
}

func (l *Ledger) recordRequest(id string, names []string, now time.Time) {
	if id == "" {
		return
	}
	l.requests[id] = &ledgerv1.RequestRecord{RequestId: id, Names: names, Time: timestamppb.New(now)}
	l.pruneRequests(now)
}

// Request returns the names a request ID created, if it was seen.
func (l *Ledger) Request(id string) ([]string, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.seenRequest(id)
}
