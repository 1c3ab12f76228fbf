package pipeline

import (
	"context"
	"path/filepath"
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

// TestFeedSavedWakesTheUpload: the channel Saved returns closes when the
// copy has saved its checkpoint, not before, and the marks the upload
// then reads hold the chunks that save marked done.
func TestFeedSavedWakesTheUpload(t *testing.T) {
	const size, chunk = 32 * mib, 2 * mib
	src := layout(size, 5, span{0, size})
	cp, err := LoadCheckpoint(filepath.Join(t.TempDir(), "ckpt"), size, chunk)
	if err != nil {
		t.Fatal(err)
	}
	cp.SaveBytes, cp.SaveInterval = 4*mib, time.Hour
	f := Subscribe(cp.Path(), size)
	defer f.Close()
	saved := f.Saved()
	sink := &stallingSink{memSink: newMemSink(size), stalled: make(chan struct{}), release: make(chan struct{})}
	done := make(chan error, 1)
	go func() {
		_, err := Copy(context.Background(), src, sink, Options{Checkpoint: cp, InFlight: 2, ChunkSize: int(chunk)})
		done <- err
	}()
	<-sink.stalled
	select {
	case <-saved:
		t.Fatal("Saved closed while the first save's flush was held")
	case <-time.After(100 * time.Millisecond):
	}
	close(sink.release)
	select {
	case <-saved:
	case <-time.After(30 * time.Second):
		t.Fatal("Saved did not close after the save")
	}
	m, err := ReadMarks(cp.Path())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for i := range m.Chunks() {
		if m.Done(i) {
			n++
		}
	}
	if n == 0 {
		t.Error("Saved closed before the checkpoint on disk marked any chunk done")
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
