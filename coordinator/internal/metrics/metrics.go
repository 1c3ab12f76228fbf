// Package metrics is a coordinator's Prometheus instrumentation: the API
// calls (a gRPC interceptor), Raft, the agent sessions, the migration jobs
// by state and phase, the bytes they move by migration server with the
// current rates, job durations, retries and failures by reason class, and
// the cache of every migration server. Every series is named ferry_...
// with bounded labels: methods, codes, states, phases, reason classes and
// migration server names, never a job.
//
// Gauges are read from the ledger when scraped, on any node; what comes
// from the agents' progress reports (bytes, rates) is counted by the
// leader, which holds the sessions: scrape every coordinator and sum, or
// read the leader's. See docs/metrics.md.
package metrics

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/ferry-v2v/ferry/coordinator/internal/consensus"
	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// Deps are what the gauges read when scraped.
type Deps struct {
	Ledger *ledger.Ledger
	// Raft reports this node's Raft state; nil leaves the Raft gauges out.
	Raft func() (consensus.Stats, bool)
	// LiveFacts, when set, are the latest facts of the hosts connected to
	// this node (the leader's sessions), which the ledger's copy lags.
	LiveFacts func() map[string]*ferryv1.HostFacts
	// Clock is time.Now unless a test sets it.
	Clock func() time.Time
}

// Metrics holds a coordinator's registry and the instruments the other
// packages feed.
type Metrics struct {
	reg   *prometheus.Registry
	deps  Deps
	start time.Time

	apiCalls    *prometheus.CounterVec
	apiDuration *prometheus.HistogramVec
	raftApply   prometheus.Histogram
	leaderChg   prometheus.Counter
	bytes       *prometheus.CounterVec
	jobDuration *prometheus.HistogramVec
	failures    *prometheus.CounterVec
	retries     prometheus.Counter

	mu   sync.Mutex
	jobs map[string]*jobTrack // by job name: what this node saw of it
}

// New registers every instrument on a registry of its own, with the Go
// runtime's and the process's collectors.
func New(deps Deps) *Metrics {
	if deps.Clock == nil {
		deps.Clock = time.Now
	}
	m := &Metrics{reg: prometheus.NewRegistry(), deps: deps, start: deps.Clock(), jobs: map[string]*jobTrack{}}
	m.apiCalls = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ferry_api_requests_total", Help: "gRPC calls served by this coordinator, by full method and status code.",
	}, []string{"method", "code"})
	m.apiDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "ferry_api_request_duration_seconds", Help: "Time to serve a unary gRPC call, by full method.",
		Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	}, []string{"method"})
	m.raftApply = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "ferry_raft_apply_duration_seconds", Help: "Time from proposing a ledger command on the leader until this node applied it.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
	})
	m.leaderChg = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ferry_raft_leader_changes_total", Help: "Times this node gained or lost the Raft leadership.",
	})
	m.bytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ferry_migration_bytes_total",
		Help: "Data bytes moved by the jobs of a migration server as their agents reported them to this leader: " +
			"direction copied (source to cache), uploaded (cache to target storage), verified (target disks read back and matched).",
	}, []string{"server", "direction"})
	m.jobDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "ferry_migration_job_duration_seconds", Help: "Time from a job's start (or creation, if it never started) to its end, by final state.",
		Buckets: []float64{10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400},
	}, []string{"state"})
	m.failures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ferry_migration_job_failures_total", Help: "Jobs that failed, by reason class (see docs/metrics.md).",
	}, []string{"reason"})
	m.retries = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ferry_migration_job_retries_total", Help: "Failed or cancelled jobs restarted (RestartMigrationJob).",
	})
	for _, r := range reasonClasses {
		m.failures.WithLabelValues(r) // every class present from the start
	}
	m.reg.MustRegister(m.apiCalls, m.apiDuration, m.raftApply, m.leaderChg, m.bytes, m.jobDuration, m.failures, m.retries,
		ledgerCollector{m}, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry is what /metrics serves.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// ObserveApply records one proposal's latency (consensus.Config.OnApply).
func (m *Metrics) ObserveApply(d time.Duration) { m.raftApply.Observe(d.Seconds()) }

// LeadershipChanged counts a change of this node's leadership.
func (m *Metrics) LeadershipChanged() { m.leaderChg.Inc() }

// SetLiveFacts sets Deps.LiveFacts (the sessions are made after the
// metrics); call it before serving.
func (m *Metrics) SetLiveFacts(f func() map[string]*ferryv1.HostFacts) { m.deps.LiveFacts = f }
