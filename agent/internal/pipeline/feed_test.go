package pipeline

import (
	"context"
	"testing"
	"time"
)

// A full feed that was asked to wait keeps the copy's chunk until the
// upload takes one; a wait that runs out drops the chunk and turns
// waiting off until the upload asks again.
func TestFeedWaitsForRoom(t *testing.T) {
	f := Subscribe(t.TempDir()+"/ckpt", 4)
	defer f.Close()
	chunk := func(i int) *FedChunk { return &FedChunk{Index: i, Data: make([]byte, 4), DataBytes: 4} }
	ctx := context.Background()
	if !f.offer(ctx, chunk(0), nil) {
		t.Fatal("an empty feed refused a chunk")
	}
	if f.offer(ctx, chunk(1), nil) {
		t.Fatal("a full feed that was not asked to wait took a chunk")
	}
	f.SetWait(time.Minute)
	kicked := make(chan struct{})
	go func() {
		<-kicked
		if f.Take(0) == nil {
			t.Error("chunk 0 was not in the feed")
		}
	}()
	if !f.offer(ctx, chunk(1), func() { close(kicked) }) || !f.Has(1) {
		t.Fatal("a full feed asked to wait did not take the chunk once the upload took one")
	}
	f.SetWait(10 * time.Millisecond)
	if f.offer(ctx, chunk(2), nil) {
		t.Fatal("a feed nobody takes from took a chunk")
	}
	start := time.Now()
	if f.offer(ctx, chunk(3), nil) || time.Since(start) > 5*time.Second {
		t.Fatal("a feed whose wait ran out waited again")
	}
}
