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

// workerBuf is a worker's chunk buffer. A copy worker may give it away
// (to a Feed) and go on with a fresh one.
type workerBuf struct {
	b      []byte
	handle *[]byte
}

// giveAway returns the buffer's handle, now the taker's, and takes a
// fresh buffer of the same length.
func (w *workerBuf) giveAway() *[]byte {
	h := w.handle
	w.b, w.handle = getChunkBuf(int64(len(w.b)))
	return h
}

// drain runs do on each job until jobs is closed or ctx ends, with one
// pooled buffer of chunk bytes for all of them: the loop of every copy and
// verification worker.
func drain(ctx context.Context, jobs <-chan job, chunk int64, do func(context.Context, job, *workerBuf) error) error {
	var w workerBuf
	w.b, w.handle = getChunkBuf(chunk)
	defer func() { putChunkBuf(w.handle) }()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case j, ok := <-jobs:
			if !ok {
				return nil
			}
			if err := do(ctx, j, &w); err != nil {
				return err
			}
		}
	}
}
