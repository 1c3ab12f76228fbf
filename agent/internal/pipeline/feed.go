package pipeline

import (
	"context"
	"sync"
	"time"
)

// A Feed hands the chunks a copy writes into its cache image to the
// upload beside the copy, so that the upload writes them to the target
// from the copy's own buffers instead of reading the cache back (through
// the copy's qemu-nbd, which decompresses what it has just compressed).
// The cache stays the restart point: a chunk is taken only once the
// copy's checkpoint marks it done, that is durably in the cache, and
// whatever the feed does not hold (it is bounded, and never makes the
// copy wait) is read from the cache as before.
//
// The upload subscribes by the checkpoint's path before the copy starts;
// every Copy with that checkpoint then offers its chunks. A Copy that
// begins drops what earlier runs offered, whose image may have been
// replaced since.
//
// An upload that takes chunks as fast as the copy makes them (a volume
// written straight into its file, without a limit) may ask the copy to
// wait a while for room instead (SetWait): a chunk the feed drops is read
// back from the cache later, which costs a host short of CPU more than a
// copy that waits for the upload's next round.
type Feed struct {
	path string
	max  int64

	mu     sync.Mutex
	chunks map[int]*FedChunk
	bytes  int64
	closed bool
	wait   time.Duration
	room   chan struct{} // closed when chunks leave the feed
	saved  chan struct{} // closed when the copy saves its checkpoint
}

// FedChunk is one chunk a copy offered: Data is its whole content as the
// cache holds it (nil for a chunk of zeroes), Spans the runs of it the
// copy wrote (whole cache granules, absolute offsets), DataBytes their
// length. Release gives the buffer back; the taker must call it.
type FedChunk struct {
	Index     int
	Off, End  int64
	Data      []byte
	Spans     []Extent
	DataBytes int64
	handle    *[]byte
}

// Release returns the chunk's buffer to the pool.
func (c *FedChunk) Release() {
	if c.handle != nil {
		putChunkBuf(c.handle)
		c.handle, c.Data = nil, nil
	}
}

// feeds holds the subscribed feeds by checkpoint path.
var feeds sync.Map

// Subscribe opens the feed of the copy whose checkpoint is at path,
// holding at most maxBytes of chunk data; it replaces any earlier
// subscription of path. Close ends it.
func Subscribe(path string, maxBytes int64) *Feed {
	f := &Feed{path: path, max: maxBytes, chunks: map[int]*FedChunk{}, room: make(chan struct{}), saved: make(chan struct{})}
	if old, ok := feeds.Swap(path, f); ok {
		old.(*Feed).Close()
	}
	return f
}

// feedOf is the feed subscribed for the checkpoint at path, or nil.
func feedOf(path string) *Feed {
	if f, ok := feeds.Load(path); ok {
		return f.(*Feed)
	}
	return nil
}

// SetWait makes a copy with a chunk the full feed has no room for wait up
// to d for the upload to take some (0, the default: not at all). A wait
// that runs out turns waiting off until the next SetWait.
func (f *Feed) SetWait(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.wait = d
}

// Saved returns a channel closed when the copy next saves its checkpoint:
// the chunks it marked done can be taken then. An upload that takes the
// channel before it looks at the checkpoint, and waits on it after, moves
// as soon as the copy does instead of at its next poll (a copy that waits
// for room in a full feed kicks a save, and then waits for the upload).
func (f *Feed) Saved() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.saved
}

// notifySaved wakes the upload waiting on Saved.
func (f *Feed) notifySaved() {
	f.mu.Lock()
	defer f.mu.Unlock()
	close(f.saved)
	f.saved = make(chan struct{})
}

// freedLocked wakes the copies waiting for room.
func (f *Feed) freedLocked() {
	close(f.room)
	f.room = make(chan struct{})
}

// Has reports whether chunk i is in the feed.
func (f *Feed) Has(i int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.chunks[i] != nil
}

// HoldsZero reports whether the feed holds chunk i as a chunk of zeroes,
// which costs an upload nothing to move.
func (f *Feed) HoldsZero(i int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.chunks[i]
	return c != nil && c.DataBytes == 0
}

// Take removes chunk i from the feed and returns it, or nil when the feed
// does not hold it.
func (f *Feed) Take(i int) *FedChunk {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.chunks[i]
	if c != nil {
		delete(f.chunks, i)
		f.bytes -= int64(len(c.Data))
		f.freedLocked()
	}
	return c
}

// Close ends the subscription and releases every chunk held.
func (f *Feed) Close() {
	feeds.CompareAndDelete(f.path, f)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	f.dropLocked()
}

// reset drops every chunk held: a new copy of the image begins.
func (f *Feed) reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dropLocked()
}

func (f *Feed) dropLocked() {
	for i, c := range f.chunks {
		c.Release()
		delete(f.chunks, i)
	}
	f.bytes = 0
	f.freedLocked()
}

// offer adds c unless the feed is closed or has no room for it, after
// waiting for room as long as SetWait says (calling full first, once); it
// reports whether the feed took c (and with it c's buffer).
func (f *Feed) offer(ctx context.Context, c *FedChunk, full func()) bool {
	var timeout <-chan time.Time
	for {
		f.mu.Lock()
		if f.closed {
			f.mu.Unlock()
			return false
		}
		if f.bytes+int64(len(c.Data)) <= f.max {
			if old := f.chunks[c.Index]; old != nil {
				f.bytes -= int64(len(old.Data))
				old.Release()
			}
			f.chunks[c.Index] = c
			f.bytes += int64(len(c.Data))
			f.mu.Unlock()
			return true
		}
		room, wait := f.room, f.wait
		f.mu.Unlock()
		if wait <= 0 || int64(len(c.Data)) > f.max {
			return false
		}
		if timeout == nil {
			t := time.NewTimer(wait)
			defer t.Stop()
			timeout = t.C
			if full != nil {
				full()
			}
		}
		select {
		case <-room:
		case <-timeout:
			// The upload is not keeping up: the copy waits no more
			// until it asks again.
			f.SetWait(0)
			return false
		case <-ctx.Done():
			return false
		}
	}
}
