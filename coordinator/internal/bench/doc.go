// Package bench holds the control-plane benchmarks of the coordinator
// (issue 2, "Benchmarks"). It has no code of its own: every benchmark
// drives real coordinators, in-process through testcluster or as
// ferry-coordinator and ferry-agent processes built into a temporary
// directory, through the public API and AgentService.Connect.
//
//	BenchmarkCreateMigrationJobs50  p50/p99 of a 50-VM CreateMigrationJobs on three-node clusters
//	                                holding 100 and 10,000 jobs, interleaved (min of block medians)
//	BenchmarkCreateMigrationJobs50Authz  the same through a follower, with and without authorization, side by side
//	BenchmarkLedgerWriteThroughput  committed commands/s with 64 concurrent writers (Raft over TLS and plain TCP)
//	BenchmarkAgentSessions200       coordinator CPU with 200 agents running 5 jobs each
//	BenchmarkMemory                 RSS of a coordinator holding 10,000 jobs, and of an idle agent
//	                                (agent/e2e's BenchmarkMemory: an idle agent after a real job)
//
// Each is a measurement run: it sets up once, measures a fixed amount of
// work or time, ignores b.N and reports its figures with ReportMetric
// (ns/op is overridden with the per-operation mean where there is one).
// Run them with -benchtime=1x, as `make bench` does:
//
//	go test -run '^$' -bench . -benchtime 1x ./coordinator/internal/bench
//
// FERRY_BENCH_STAGES=1 adds where CreateMigrationJobs spends its time:
// the API's steps (admission, propose, read), the authorization
// interceptor, and Raft's and its BoltDB store's own timings (the
// leader's log write and fsync, a follower's, the round trip, commit,
// the FSM's apply), p50/p99/max of each over every node of the run.
package bench
