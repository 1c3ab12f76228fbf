package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferry-v2v/ferry/coordinator/internal/capacity"
	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

var (
	descJobs = prometheus.NewDesc("ferry_migration_jobs",
		"Migration jobs in the ledger by state, and phase while running (phase is empty otherwise).", []string{"state", "phase"}, nil)
	descRate = prometheus.NewDesc("ferry_migration_rate_bytes_per_second",
		"Current rate of the running jobs of a migration server as their agents last reported it to this leader, by direction (copied, uploaded).",
		[]string{"server", "direction"}, nil)
	descSessions = prometheus.NewDesc("ferry_agent_sessions",
		"Hosts whose agent holds a session with the leader, as the ledger records it.", nil, nil)
	descHosts     = prometheus.NewDesc("ferry_hosts", "Hosts registered in the ledger.", nil, nil)
	descCacheSize = prometheus.NewDesc("ferry_migration_server_cache_size_bytes",
		"Size of the file system of a migration server's cache path, as its host last reported it.", []string{"server"}, nil)
	descCacheUsed = prometheus.NewDesc("ferry_migration_server_cache_used_bytes",
		"Used space of the file system of a migration server's cache path (size less free).", []string{"server"}, nil)
	descCacheFree = prometheus.NewDesc("ferry_migration_server_cache_free_bytes",
		"Free space at a migration server's cache path less what its running jobs reserve: what new jobs are admitted against.", []string{"server"}, nil)
	descCacheReserved = prometheus.NewDesc("ferry_migration_server_cache_reserved_bytes",
		"What the running jobs of a migration server reserve in its cache (their disks' virtual sizes).", []string{"server"}, nil)
	descServerEnabled = prometheus.NewDesc("ferry_migration_server_enabled",
		"1 when the migration server is enabled, 0 when disabled.", []string{"server"}, nil)
	descTerm        = prometheus.NewDesc("ferry_raft_term", "This node's current Raft term.", nil, nil)
	descCommitIndex = prometheus.NewDesc("ferry_raft_commit_index", "This node's Raft commit index.", nil, nil)
	descAppliedIdx  = prometheus.NewDesc("ferry_raft_applied_index", "The last Raft log index this node applied to its ledger.", nil, nil)
	descLastIndex   = prometheus.NewDesc("ferry_raft_last_index", "The last index of this node's Raft log.", nil, nil)
	descLeader      = prometheus.NewDesc("ferry_raft_leader", "1 while this node is the Raft leader.", nil, nil)
	descAuditEvents = prometheus.NewDesc("ferry_audit_events", "Audit events the ledger keeps.", nil, nil)
)

var jobStates = []ferryv1.MigrationJobState{
	ferryv1.MigrationJobState_MIGRATION_JOB_STATE_QUEUED, ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING,
	ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED, ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED,
	ferryv1.MigrationJobState_MIGRATION_JOB_STATE_CANCELLED,
}

var runningPhases = []ferryv1.MigrationJobPhase{
	ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_UNSPECIFIED, ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONVERTING,
	ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_UPLOADING, ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONFIGURING,
	ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_PREPARING,
}

// ledgerCollector reads the gauges from the ledger, Raft and the tracked
// rates when scraped.
type ledgerCollector struct{ m *Metrics }

func (c ledgerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descJobs, descRate, descSessions, descHosts, descCacheSize, descCacheUsed, descCacheFree,
		descCacheReserved, descServerEnabled, descTerm, descCommitIndex, descAppliedIdx, descLastIndex, descLeader, descAuditEvents} {
		ch <- d
	}
}

func (c ledgerCollector) Collect(ch chan<- prometheus.Metric) {
	l := c.m.deps.Ledger
	c.collectJobs(ch, l)
	c.collectRates(ch)
	c.collectServers(ch, l)
	if c.m.deps.Raft != nil {
		if st, leader := c.m.deps.Raft(); st.State != "" {
			gauge(ch, descTerm, float64(st.Term))
			gauge(ch, descCommitIndex, float64(st.CommitIndex))
			gauge(ch, descAppliedIdx, float64(st.AppliedIndex))
			gauge(ch, descLastIndex, float64(st.LastIndex))
			gauge(ch, descLeader, b2f(leader))
		}
	}
	gauge(ch, descAuditEvents, float64(l.AuditEventCount()))
}

func (c ledgerCollector) collectJobs(ch chan<- prometheus.Metric, l *ledger.Ledger) {
	type key struct {
		s ferryv1.MigrationJobState
		p ferryv1.MigrationJobPhase
	}
	counts := map[key]int{}
	l.VisitJobs(ledger.JobFilter{}, func(j *ferryv1.MigrationJob) bool {
		k := key{s: j.GetState()}
		if k.s == ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING {
			k.p = j.GetPhase()
		}
		counts[k]++
		return true
	})
	// Every state (and running phase) is present, 0 included, so a
	// dashboard's series do not come and go.
	for _, s := range jobStates {
		phases := []ferryv1.MigrationJobPhase{ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_UNSPECIFIED}
		if s == ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING {
			phases = runningPhases
		}
		for _, p := range phases {
			gauge(ch, descJobs, float64(counts[key{s, p}]), stateLabel(s), phaseLabel(p))
		}
	}
}

func (c ledgerCollector) collectRates(ch chan<- prometheus.Metric) {
	rates := map[[2]string]float64{}
	c.m.mu.Lock()
	for _, t := range c.m.jobs {
		for p, r := range t.rates {
			rates[[2]string{t.server, phaseDirection[p]}] += r
		}
	}
	c.m.mu.Unlock()
	for k, r := range rates {
		gauge(ch, descRate, r, k[0], k[1])
	}
}

func (c ledgerCollector) collectServers(ch chan<- prometheus.Metric, l *ledger.Ledger) {
	running := l.Jobs(ledger.JobFilter{State: ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING})
	sessions, hosts := 0, 0
	facts := map[string]*ferryv1.HostFacts{}
	for _, h := range l.Hosts("") {
		hosts++
		if h.GetConnected() {
			sessions++
		}
		facts[h.GetName()] = h.GetFacts()
	}
	if c.m.deps.LiveFacts != nil {
		for name, f := range c.m.deps.LiveFacts() {
			facts[name] = f
		}
	}
	gauge(ch, descSessions, float64(sessions))
	gauge(ch, descHosts, float64(hosts))
	l.VisitMigrationServers(func(s *ferryv1.MigrationServer) bool {
		id := serverID(s.GetName())
		gauge(ch, descServerEnabled, b2f(s.GetEnabled()), id)
		room := capacity.Cache(s, facts[s.GetHost()], capacity.Reserved(s.GetName(), running))
		gauge(ch, descCacheReserved, float64(room.Reserved), id)
		if !room.Known {
			return true
		}
		gauge(ch, descCacheFree, float64(room.Available()), id)
		for _, st := range facts[s.GetHost()].GetStorages() {
			if st.GetPath() == s.GetCachePath() {
				gauge(ch, descCacheSize, float64(st.GetTotalBytes()), id)
				gauge(ch, descCacheUsed, float64(max(st.GetTotalBytes()-st.GetFreeBytes(), 0)), id)
				break
			}
		}
		return true
	})
}

func gauge(ch chan<- prometheus.Metric, d *prometheus.Desc, v float64, labels ...string) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
