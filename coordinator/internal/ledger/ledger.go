// Package ledger is the coordinator's replicated state: every resource of
// the ferry.v1 API as the Raft log has built it. It is mutated only by the
// FSM, one method per command, and never does I/O or reads the clock: times
// and identifiers arrive stamped in the commands.
package ledger

import (
	"cmp"
	"slices"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// Defaults of the cluster-wide settings.
const (
	DefaultJobParallelism        = 10
	DefaultCacheRetention        = 24 * time.Hour
	DefaultAgentGracePeriod      = 5 * time.Minute
	DefaultInventorySyncInterval = 5 * time.Minute
	// DefaultGuestShutdownTimeout is how long a guest shutdown (a VMware
	// copy's, a warm cutover's) may take before the source VM is powered
	// off.
	DefaultGuestShutdownTimeout = 10 * time.Minute
	// DefaultPrecopyInterval is a warm job's time between precopy rounds
	// when neither its options nor the settings give one.
	DefaultPrecopyInterval = 30 * time.Minute
	// MinPrecopyInterval is the least time between precopy rounds.
	MinPrecopyInterval = 10 * time.Second
	SettingsName       = "settings"
)

// JobEvent tells an observer that a job changed or went away.
type JobEvent struct {
	Job     *ferryv1.MigrationJob
	Deleted bool
}

// Ledger holds the state. Readers get clones, never pointers into it.
type Ledger struct {
	mu          sync.RWMutex
	clusters    map[string]*ferryv1.Cluster
	hosts       map[string]*ferryv1.Host
	storages    map[string]*ferryv1.PrimaryStorage
	networks    map[string]*ferryv1.L3Network
	servers     map[string]*ferryv1.MigrationServer
	credentials map[string]*ledgerv1.SealedCredential
	sources     map[string]*ferryv1.Source
	inventories map[string]*ferryv1.SourceInventory
	mappings    map[string]*ferryv1.NetworkMappingGroup
	jobs        map[string]*ferryv1.MigrationJob
	addrs       map[string]map[string][]string // network → address → jobs given it (addresses.go)
	planned     map[plannedKey]*PlannedLoad    // what queued and running jobs add up to (planned.go)
	queued      queuedIndex                    // queued jobs by server and waiting reason (queued.go)
	byState     map[ferryv1.MigrationJobState]map[string]*ferryv1.MigrationJob
	freed       uint64 // see AddressesFreed
	freedAll    uint64 // AddressesFreed at the last freeAll
	// freedLog lists, by network, the addresses that may have been
	// freed, oldest first; freedTrimmed is the count of the newest one
	// dropped (see AddressesFreedSince).
	freedLog     map[string][]freedAddr
	freedTrimmed map[string]uint64
	nodes        map[string]*ledgerv1.Node
	requests     map[string]*ledgerv1.RequestRecord
	// oldestRequest is the time of the oldest request record when known;
	// see pruneRequests.
	oldestRequest time.Time
	settings      *ferryv1.Settings
	revoked       map[string]*ferryv1.RevokedCertificate // by serial
	usage         map[string]*ledgerv1.CacheUsageHistory // by migration server
	// The audit trail, oldest first (audit.go), the number of the last
	// event and the retention it is pruned by.
	audit          []*ferryv1.AuditEvent
	auditSeq       uint64
	auditRetention *ledgerv1.AuditRetention
	// bundleKey is the cluster's sealed bundle signing key (bundlekey.go).
	bundleKey *ledgerv1.SetBundleSigningKey

	observer       func(JobEvent)
	serverObserver func(*ferryv1.MigrationServer)
}

// New returns an empty ledger with default settings.
func New() *Ledger {
	l := &Ledger{}
	l.reset()
	return l
}

func (l *Ledger) reset() {
	l.clusters = map[string]*ferryv1.Cluster{}
	l.hosts = map[string]*ferryv1.Host{}
	l.storages = map[string]*ferryv1.PrimaryStorage{}
	l.networks = map[string]*ferryv1.L3Network{}
	l.servers = map[string]*ferryv1.MigrationServer{}
	l.credentials = map[string]*ledgerv1.SealedCredential{}
	l.sources = map[string]*ferryv1.Source{}
	l.inventories = map[string]*ferryv1.SourceInventory{}
	l.mappings = map[string]*ferryv1.NetworkMappingGroup{}
	l.jobs = map[string]*ferryv1.MigrationJob{}
	l.addrs = map[string]map[string][]string{}
	l.planned = map[plannedKey]*PlannedLoad{}
	l.queued = queuedIndex{}
	l.byState = map[ferryv1.MigrationJobState]map[string]*ferryv1.MigrationJob{}
	l.freeAll()
	l.nodes = map[string]*ledgerv1.Node{}
	l.requests = map[string]*ledgerv1.RequestRecord{}
	l.oldestRequest = time.Time{}
	l.settings = DefaultSettings()
	l.revoked = map[string]*ferryv1.RevokedCertificate{}
	l.usage = map[string]*ledgerv1.CacheUsageHistory{}
	l.audit = nil
	l.auditSeq = 0
	l.auditRetention = DefaultAuditRetention()
	l.bundleKey = nil
}

// DefaultSettings are the settings of a new ledger.
func DefaultSettings() *ferryv1.Settings {
	return &ferryv1.Settings{
		Name:                   SettingsName,
		JobParallelism:         DefaultJobParallelism,
		CacheRetention:         durationpb.New(DefaultCacheRetention),
		HostAllocationStrategy: ferryv1.HostAllocationStrategy_HOST_ALLOCATION_STRATEGY_FEWEST_RUNNING_VMS,
		AgentGracePeriod:       durationpb.New(DefaultAgentGracePeriod),
		InventorySyncInterval:  durationpb.New(DefaultInventorySyncInterval),
		GuestShutdownTimeout:   durationpb.New(DefaultGuestShutdownTimeout),
		PrecopyInterval:        durationpb.New(DefaultPrecopyInterval),
	}
}

// SetObserver installs fn, called with every job change while the ledger
// is locked: it must not block or call back into the ledger. The job is
// the ledger's own value, never changed in place: fn must neither change
// nor keep it (it may keep a copy).
func (l *Ledger) SetObserver(fn func(JobEvent)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.observer = fn
}

// SetServerObserver installs fn, called with a migration server whose
// bandwidth limits a command changed, while the ledger is locked: it must
// not block or call back into the ledger.
func (l *Ledger) SetServerObserver(fn func(*ferryv1.MigrationServer)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.serverObserver = fn
}

func (l *Ledger) notify(job *ferryv1.MigrationJob, deleted bool) {
	if l.observer != nil {
		l.observer(JobEvent{Job: job, Deleted: deleted})
	}
}

// Snapshot returns a deep copy of the whole ledger, every list sorted by
// name so equal ledgers give equal snapshots.
func (l *Ledger) Snapshot() *ledgerv1.Snapshot {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return &ledgerv1.Snapshot{
		Clusters:             sortedClones(l.clusters),
		Hosts:                sortedClones(l.hosts),
		PrimaryStorages:      sortedClones(l.storages),
		L3Networks:           sortedClones(l.networks),
		MigrationServers:     sortedClones(l.servers),
		Credentials:          sortedClones(l.credentials),
		Sources:              sortedClones(l.sources),
		Jobs:                 sortedClones(l.jobs),
		Settings:             clone(l.settings),
		Nodes:                sortedClones(l.nodes),
		Requests:             sortedClones(l.requests),
		SourceInventories:    sortedClones(l.inventories),
		NetworkMappingGroups: sortedClones(l.mappings),
		RevokedCertificates:  sortedClones(l.revoked),
		CacheUsage:           sortedClones(l.usage),
		AuditEvents:          cloneAll(l.audit),
		AuditRetention:       clone(l.auditRetention),
		AuditSequence:        l.auditSeq,
		BundleSigningKey:     cloneOrNil(l.bundleKey),
	}
}

// Restore replaces the whole ledger with s.
func (l *Ledger) Restore(s *ledgerv1.Snapshot) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.reset()
	fill(l.clusters, s.GetClusters(), (*ferryv1.Cluster).GetName)
	fill(l.hosts, s.GetHosts(), (*ferryv1.Host).GetName)
	fill(l.storages, s.GetPrimaryStorages(), (*ferryv1.PrimaryStorage).GetName)
	fill(l.networks, s.GetL3Networks(), (*ferryv1.L3Network).GetName)
	fill(l.servers, s.GetMigrationServers(), (*ferryv1.MigrationServer).GetName)
	fill(l.credentials, s.GetCredentials(), func(c *ledgerv1.SealedCredential) string { return c.GetCredential().GetName() })
	fill(l.sources, s.GetSources(), (*ferryv1.Source).GetName)
	fill(l.mappings, s.GetNetworkMappingGroups(), (*ferryv1.NetworkMappingGroup).GetName)
	fill(l.jobs, s.GetJobs(), (*ferryv1.MigrationJob).GetName)
	l.indexAllJobs()
	l.indexAllStored()
	fill(l.nodes, s.GetNodes(), (*ledgerv1.Node).GetId)
	fill(l.requests, s.GetRequests(), (*ledgerv1.RequestRecord).GetRequestId)
	fill(l.inventories, s.GetSourceInventories(), (*ferryv1.SourceInventory).GetSource)
	fill(l.revoked, s.GetRevokedCertificates(), (*ferryv1.RevokedCertificate).GetSerial)
	fill(l.usage, s.GetCacheUsage(), (*ledgerv1.CacheUsageHistory).GetName)
	if s.GetSettings() != nil {
		l.settings = clone(s.GetSettings())
	}
	l.audit = cloneAll(s.GetAuditEvents())
	l.auditSeq = s.GetAuditSequence()
	if s.GetAuditRetention() != nil {
		l.auditRetention = clone(s.GetAuditRetention())
	}
	if s.GetBundleSigningKey() != nil {
		l.bundleKey = clone(s.GetBundleSigningKey())
	}
}

func cloneOrNil[T interface {
	proto.Message
	comparable
}](m T) T {
	var zero T
	if m == zero {
		return zero
	}
	return clone(m)
}

func clone[T proto.Message](m T) T {
	return proto.Clone(m).(T)
}

func cloneAll[T proto.Message](in []T) []T {
	out := make([]T, len(in))
	for i, v := range in {
		out[i] = clone(v)
	}
	return out
}

func fill[T proto.Message](dst map[string]T, src []T, key func(T) string) {
	for _, v := range src {
		dst[key(v)] = clone(v)
	}
}

func sortedClones[T proto.Message](m map[string]T) []T {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := make([]T, 0, len(keys))
	for _, k := range keys {
		out = append(out, clone(m[k]))
	}
	return out
}

// filtered returns sorted clones of the values that pass keep.
func filtered[T proto.Message](m map[string]T, keep func(T) bool) []T {
	out := make([]T, 0, len(m))
	for _, v := range m {
		if keep == nil || keep(v) {
			out = append(out, clone(v))
		}
	}
	slices.SortFunc(out, func(a, b T) int { return cmp.Compare(nameOf(a), nameOf(b)) })
	return out
}

type named interface{ GetName() string }

func nameOf(m proto.Message) string {
	if n, ok := m.(named); ok {
		return n.GetName()
	}
	return ""
}

func get[T proto.Message](l *Ledger, m map[string]T, name string) (T, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	v, ok := m[name]
	if !ok {
		var zero T
		return zero, false
	}
	return clone(v), true
}
