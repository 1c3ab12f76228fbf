package pipeline

import (
	"context"
	"sync"
)

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

// drain runs do on each job until jobs is closed or ctx ends, with one
// pooled buffer of chunk bytes for all of them: the loop of every copy and
// verification worker.
func drain(ctx context.Context, jobs <-chan job, chunk int64, do func(context.Context, job, []byte) error) error {
	buf, handle := getChunkBuf(chunk)
	defer putChunkBuf(handle)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case j, ok := <-jobs:
			if !ok {
				return nil
			}
			if err := do(ctx, j, buf); err != nil {
				return err
			}
		}
	}
}
