// Package consistency holds only tests: it runs three real
// ferry-coordinator processes, kills, restarts and pauses them (SIGKILL,
// SIGSTOP) under concurrent writes and reads of one setting, and checks
// the history: linearizable reads with porcupine, read-your-writes and
// monotonic local reads from the applied index every answer carries, and
// that a follower gives up on a paused leader within the forward timeout.
package consistency
