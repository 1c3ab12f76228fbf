package consensus

import (
	"context"
	"log/slog"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// BenchmarkProposeThroughput proposes real ledger commands from many
// goroutines to the leader of a three-node loopback cluster with fsync'd
// raft-boltdb stores, and reports committed-and-applied commands per
// second, with Raft over plain TCP (--insecure) and over mutual TLS. It
// also reports the CPU time (user and system, all three nodes being in
// this process) each command costs, which a loaded machine disturbs less
// than the rate.
func BenchmarkProposeThroughput(b *testing.B) {
	b.Run("transport=tcp", func(b *testing.B) { benchmarkPropose(b, nil) })
	b.Run("transport=tls", func(b *testing.B) { benchmarkPropose(b, testPeerTLS(b)) })
}

func benchmarkPropose(b *testing.B, peer *PeerTLS) {
	h := newHarness(b, slog.LevelWarn, func(c *Config) { c.TLS = peer })
	n1 := h.start("n1", true)
	ms := []*member{n1, h.start("n2", false), h.start("n3", false)}
	ctx := context.Background()
	for _, m := range ms[1:] {
		if err := n1.node.AddVoter(ctx, m.id, m.node.RaftAddress()); err != nil {
			b.Fatal(err)
		}
	}
	leader := waitLeader(b, 5*time.Second, ms...)
	var next atomic.Int64
	var failed atomic.Int64
	b.SetParallelism(128) // 256 proposers on 2 cores
	b.ResetTimer()
	cpu0 := cpuTime(b)
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := leader.node.Propose(ctx, putCluster(int(next.Add(1)))); err != nil {
				failed.Add(1)
			}
		}
	})
	elapsed := time.Since(start)
	cpu := cpuTime(b) - cpu0
	b.StopTimer()
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d of %d proposals failed", n, b.N)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "cmds/s")
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/cmd")
}

// cpuTime is the user and system CPU time this process has used.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
