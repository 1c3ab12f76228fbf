package bench

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	metrics "github.com/hashicorp/go-metrics/compat"
)

// stageSink keeps every timing sample the API, Raft and its BoltDB store
// emit (go-metrics, milliseconds), by key, so a benchmark can show where
// a call's time went: ferry.create_migration_jobs.* (api's steps),
// ferry.authz.unary, raft.leader.dispatchLog (the leader's own log write
// and fsync), raft.rpc.appendEntries.storeLogs (a follower's),
// raft.replication.appendEntries.rpc (a round trip to a follower),
// raft.commitTime (dispatch to commit), raft.fsm.apply and
// raft.fsm.applyBatch (the ledger's apply on each node).
type stageSink struct {
	metrics.BlackholeSink
	mu      sync.Mutex
	samples map[string][]float32
}

func (s *stageSink) AddSample(key []string, val float32) {
	k := strings.Join(key, ".")
	s.mu.Lock()
	s.samples[k] = append(s.samples[k], val)
	s.mu.Unlock()
}

func (s *stageSink) AddSampleWithLabels(key []string, val float32, _ []metrics.Label) {
	s.AddSample(key, val)
}

// stages collects Raft's timings when FERRY_BENCH_STAGES is set. The
// sink is process-wide: every node of every cluster of the run adds to it.
type stages struct{ sink *stageSink }

func stagesOn(b *testing.B) *stages {
	if os.Getenv("FERRY_BENCH_STAGES") == "" {
		return &stages{}
	}
	sink := &stageSink{samples: map[string][]float32{}}
	cfg := metrics.DefaultConfig("")
	cfg.EnableHostname, cfg.EnableRuntimeMetrics, cfg.EnableServiceLabel = false, false, false
	if _, err := metrics.NewGlobal(cfg, sink); err != nil {
		b.Fatal(err)
	}
	return &stages{sink: sink}
}

// reset forgets the samples so far (the cluster's start).
func (s *stages) reset() {
	if s.sink == nil {
		return
	}
	s.sink.mu.Lock()
	clear(s.sink.samples)
	s.sink.mu.Unlock()
}

// report logs each timing's count, p50, p99 and max.
func (s *stages) report(b *testing.B) {
	if s.sink == nil {
		return
	}
	s.sink.mu.Lock()
	defer s.sink.mu.Unlock()
	keys := make([]string, 0, len(s.sink.samples))
	for k := range s.sink.samples {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var sb strings.Builder
	for _, k := range keys {
		if !shownStage(k) {
			continue
		}
		v := s.sink.samples[k]
		d := make([]time.Duration, len(v))
		for i, msv := range v {
			d[i] = time.Duration(float64(msv) * float64(time.Millisecond))
		}
		p50, p99, maxD, _ := latencySummary(d)
		fmt.Fprintf(&sb, "\n  %s: %d samples, p50 %.2f ms, p99 %.2f ms, max %.2f ms", k, len(v), ms(p50), ms(p99), ms(maxD))
	}
	b.Logf("stage timings (every node, FERRY_BENCH_STAGES):%s", sb.String())
}

// shownStage says whether report shows key: the API's and Raft's timings
// of a write, not the sizes, counts and per-peer copies go-metrics keeps.
func shownStage(key string) bool {
	return strings.HasPrefix(key, "ferry.") || slices.Contains([]string{
		"raft.leader.dispatchLog", "raft.boltdb.storeLogs", "raft.rpc.appendEntries.storeLogs",
		"raft.replication.appendEntries.rpc", "raft.commitTime", "raft.fsm.applyBatch", "raft.fsm.enqueue",
	}, key)
}
