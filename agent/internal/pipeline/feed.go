package pipeline

import "sync"

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
type Feed struct {
	path string
	max  int64

	mu     sync.Mutex
	chunks map[int]*FedChunk
	bytes  int64
	closed bool
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
	f := &Feed{path: path, max: maxBytes, chunks: map[int]*FedChunk{}}
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
}

// offer adds c unless the feed is closed or has no room for it; it
// reports whether the feed took c (and with it c's buffer).
func (f *Feed) offer(c *FedChunk) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed || f.bytes+int64(len(c.Data)) > f.max {
		return false
	}
	if old := f.chunks[c.Index]; old != nil {
		f.bytes -= int64(len(old.Data))
		old.Release()
	}
	f.chunks[c.Index] = c
	f.bytes += int64(len(c.Data))
	return true
}
