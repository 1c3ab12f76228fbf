// Package metrics is an agent's Prometheus instrumentation, served at
// --metrics-listen: the bytes its jobs moved (copied into the cache,
// uploaded to target storage, verified), their current rates, the jobs it
// runs by phase and how they ended, its session with the coordinators,
// and the size and free space of its --cache-path. Labels are bounded:
// directions, phases and outcomes, never a job.
package metrics

import (
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sys/unix"

	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// Reporter is where the runner's reports go (the session's outbox).
type Reporter interface {
	Progress(p *agentv1.JobProgress)
	Result(r *agentv1.JobResult)
}

// Metrics holds the agent's registry.
type Metrics struct {
	reg       *prometheus.Registry
	bytes     *prometheus.CounterVec
	results   *prometheus.CounterVec
	sessions  prometheus.Counter
	connected prometheus.Gauge

	mu   sync.Mutex
	jobs map[string]*job
}

type job struct {
	epoch    int64
	phase    ferryv1.MigrationJobPhase
	bytes    map[ferryv1.MigrationJobPhase]int64
	rates    map[ferryv1.MigrationJobPhase]float64
	verified map[string]bool
}

var directions = map[ferryv1.MigrationJobPhase]string{
	ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONVERTING: "copied",
	ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_UPLOADING:  "uploaded",
}

var (
	descJobs = prometheus.NewDesc("ferry_agent_jobs", "Jobs this agent runs, by phase.", []string{"phase"}, nil)
	descRate = prometheus.NewDesc("ferry_agent_rate_bytes_per_second",
		"Current rate of this agent's running jobs, by direction (copied, uploaded).", []string{"direction"}, nil)
	descCacheSize = prometheus.NewDesc("ferry_agent_cache_size_bytes", "Size of the file system of --cache-path.", nil, nil)
	descCacheFree = prometheus.NewDesc("ferry_agent_cache_free_bytes", "Free space of the file system of --cache-path (to an unprivileged writer).", nil, nil)
	descCacheUsed = prometheus.NewDesc("ferry_agent_cache_used_bytes", "Used space of the file system of --cache-path.", nil, nil)
)

// New registers the agent's instruments; cachePath is measured when
// scraped ("" leaves the cache gauges out).
func New(cachePath string) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry(), jobs: map[string]*job{}}
	m.bytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ferry_agent_bytes_total",
		Help: "Data bytes this agent's jobs moved: copied (source to cache), uploaded (cache to target storage), verified (target disks read back and matched).",
	}, []string{"direction"})
	m.results = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ferry_agent_job_results_total", Help: "Jobs this agent ended, by outcome (succeeded, failed, cancelled).",
	}, []string{"outcome"})
	m.sessions = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ferry_agent_sessions_opened_total", Help: "Sessions this agent opened with a coordinator (the first, and each reconnection).",
	})
	m.connected = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ferry_agent_session_connected", Help: "1 while this agent holds a session with the leader.",
	})
	for _, d := range directions {
		m.bytes.WithLabelValues(d)
	}
	m.bytes.WithLabelValues("verified")
	for _, o := range []string{"succeeded", "failed", "cancelled"} {
		m.results.WithLabelValues(o)
	}
	m.reg.MustRegister(m.bytes, m.results, m.sessions, m.connected, collector{m: m, cachePath: cachePath},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry is what /metrics serves.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Session is session.Deps.OnSession.
func (m *Metrics) Session(open bool) {
	if open {
		m.sessions.Inc()
		m.connected.Set(1)
		return
	}
	m.connected.Set(0)
}

// Wrap returns a Reporter that counts every report before passing it on.
func (m *Metrics) Wrap(next Reporter) Reporter { return reporter{m: m, next: next} }

type reporter struct {
	m    *Metrics
	next Reporter
}

func (r reporter) Progress(p *agentv1.JobProgress) {
	r.m.observe(p.GetJob(), p.GetEpoch(), p.GetPhase(), p.GetPhaseTimings(), p.GetDisks(), false)
	r.next.Progress(p)
}

func (r reporter) Result(res *agentv1.JobResult) {
	r.m.observe(res.GetJob(), res.GetEpoch(), 0, res.GetPhaseTimings(), res.GetDisks(), true)
	if o := res.GetOutcome(); o != agentv1.JobOutcome_JOB_OUTCOME_UNSPECIFIED {
		r.m.results.WithLabelValues(strings.ToLower(strings.TrimPrefix(o.String(), "JOB_OUTCOME_"))).Inc()
	}
	r.next.Result(res)
}

// observe adds what a report's phases moved since the last report of the
// same assignment.
func (m *Metrics) observe(name string, epoch int64, phase ferryv1.MigrationJobPhase, timings []*ferryv1.PhaseTiming,
	disks []*ferryv1.DiskProgress, final bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	j, ok := m.jobs[name]
	if !ok || j.epoch != epoch {
		j = &job{epoch: epoch, bytes: map[ferryv1.MigrationJobPhase]int64{}, verified: map[string]bool{}}
		m.jobs[name] = j
	}
	if phase != ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_UNSPECIFIED {
		j.phase = phase
	}
	j.rates = map[ferryv1.MigrationJobPhase]float64{}
	for _, t := range timings {
		dir, ok := directions[t.GetPhase()]
		if !ok {
			continue
		}
		if d := t.GetBytes() - j.bytes[t.GetPhase()]; d > 0 {
			m.bytes.WithLabelValues(dir).Add(float64(d))
			j.bytes[t.GetPhase()] = t.GetBytes()
		}
		if t.GetEndTime() == nil {
			j.rates[t.GetPhase()] = t.GetBytesPerSecond()
		}
	}
	for _, d := range disks {
		if d.GetVerified() && !j.verified[d.GetSourceDisk()] {
			j.verified[d.GetSourceDisk()] = true
			m.bytes.WithLabelValues("verified").Add(float64(d.GetTotalBytes()))
		}
	}
	if final {
		delete(m.jobs, name)
	}
}

type collector struct {
	m         *Metrics
	cachePath string
}

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descJobs, descRate, descCacheSize, descCacheFree, descCacheUsed} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	phases := map[string]float64{"converting": 0, "uploading": 0, "configuring": 0}
	rates := map[string]float64{}
	c.m.mu.Lock()
	for _, j := range c.m.jobs {
		if p := strings.ToLower(strings.TrimPrefix(j.phase.String(), "MIGRATION_JOB_PHASE_")); j.phase != 0 {
			phases[p]++
		}
		for p, r := range j.rates {
			rates[directions[p]] += r
		}
	}
	c.m.mu.Unlock()
	for p, n := range phases {
		ch <- prometheus.MustNewConstMetric(descJobs, prometheus.GaugeValue, n, p)
	}
	for d, r := range rates {
		ch <- prometheus.MustNewConstMetric(descRate, prometheus.GaugeValue, r, d)
	}
	if c.cachePath == "" {
		return
	}
	var st unix.Statfs_t
	if err := unix.Statfs(c.cachePath, &st); err != nil {
		return
	}
	size, free := int64(st.Blocks)*st.Bsize, int64(st.Bavail)*st.Bsize
	ch <- prometheus.MustNewConstMetric(descCacheSize, prometheus.GaugeValue, float64(size))
	ch <- prometheus.MustNewConstMetric(descCacheFree, prometheus.GaugeValue, float64(free))
	ch <- prometheus.MustNewConstMetric(descCacheUsed, prometheus.GaugeValue, float64(size-int64(st.Bfree)*st.Bsize))
}
