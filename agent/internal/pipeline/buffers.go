package pipeline

import "sync"

// chunkBufs keeps chunk buffers (MaxChunkSize bytes each) between copies
// and verifications, so that the jobs of an agent reuse the same few
// instead of leaving garbage of InFlight × 2 MiB behind each. A pool
// empties itself over two garbage collections: an idle agent that
// collects (the runner does after a job) hands the memory back.
var chunkBufs = sync.Pool{New: func() any {
	b := make([]byte, MaxChunkSize)
	return &b
}}

// getChunkBuf returns a buffer of n bytes, n at most MaxChunkSize, and
// the handle putChunkBuf takes back. Its content is arbitrary.
func getChunkBuf(n int64) ([]byte, *[]byte) {
	p := chunkBufs.Get().(*[]byte)
	return (*p)[:n], p
}

func putChunkBuf(p *[]byte) { chunkBufs.Put(p) }
