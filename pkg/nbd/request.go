package nbd

import (
	"context"
	"net"
	"sync/atomic"
)

// request is one command on the wire, from send to its final reply.
type request struct {
	cmd    uint16
	flags  uint16
	cookie uint64
	off    uint64
	length uint32
	wdata  []byte // payload of a write
	rbuf   []byte // destination of a read, len == length

	done chan struct{} // closed by whoever removes the request from pending
	grp  *group        // the batch it belongs to, when sent by split

	// Owned by the reader goroutine until done is closed.
	err     error
	covered spans    // parts of a read the reply has covered
	extents []Extent // block status of the base:allocation context
	status  bool     // a block status chunk for our context arrived

	// Guarded by Client.mu.
	abandoned bool // the caller has gone; discard what arrives
	busy      bool // the reader is writing into rbuf
}

// group is the requests one call split: its done closes when the last of
// them completes, so that the caller wakes once, not once per request.
type group struct {
	left atomic.Int32
	done chan struct{}
}

// complete closes req.done, and its group's when it is the last.
func (req *request) complete() {
	close(req.done)
	if g := req.grp; g != nil && g.left.Add(-1) == 0 {
		close(g.done)
	}
}

func putRequest(b []byte, cmd, flags uint16, cookie, off uint64, length uint32) {
	be.PutUint32(b, magicRequest)
	be.PutUint16(b[4:], flags)
	be.PutUint16(b[6:], cmd)
	be.PutUint64(b[8:], cookie)
	be.PutUint64(b[16:], off)
	be.PutUint32(b[24:], length)
}

// do sends req and waits for its reply.
func (c *Client) do(ctx context.Context, req *request) error {
	if err := c.start(ctx, req); err != nil {
		return err
	}
	return c.wait(ctx, req)
}

// start takes an in-flight slot, registers req and writes it. When start
// returns nil the request is on the wire and must be waited for.
func (c *Client) start(ctx context.Context, req *request) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := c.acquire(ctx, 1); err != nil {
		return err
	}
	req.done = make(chan struct{})
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		c.slots.Release(1)
		return c.err
	}
	c.cookie++
	req.cookie = c.cookie
	c.pending[req.cookie] = req
	c.mu.Unlock()

	select {
	case c.wmu <- struct{}{}:
	case <-c.dead:
		c.remove(req)
		return c.connErr()
	case <-ctx.Done():
		c.remove(req)
		return ctx.Err()
	}
	err := c.writeRequest(req)
	<-c.wmu
	if err != nil {
		// The stream may hold half a request: nothing more can be sent.
		// The reader fails req with the others.
		c.shutdown(connFailed(err))
	}
	return nil
}

// startBatch sends reqs in order, as many at a time as the client may
// have in flight, each batch once that many slots are free and with one
// write (a writev of every header and payload): a call split into
// requests costs one wake-up and one system call, not one per request. It
// returns how many it sent, which must be waited for, and why it stopped
// short.
func (c *Client) startBatch(ctx context.Context, reqs []*request) (int, error) {
	sent := 0
	for sent < len(reqs) {
		if err := ctx.Err(); err != nil {
			return sent, err
		}
		n := min(len(reqs)-sent, int(c.maxFlight))
		if err := c.acquire(ctx, int64(n)); err != nil {
			return sent, err
		}
		batch := reqs[sent : sent+n]
		c.mu.Lock()
		if c.err != nil {
			err := c.err
			c.mu.Unlock()
			c.slots.Release(int64(n))
			return sent, err
		}
		for _, req := range batch {
			req.done = make(chan struct{})
			c.cookie++
			req.cookie = c.cookie
			c.pending[req.cookie] = req
		}
		c.mu.Unlock()
		select {
		case c.wmu <- struct{}{}:
		case <-c.dead:
			for _, req := range batch {
				c.remove(req)
			}
			return sent, c.connErr()
		case <-ctx.Done():
			for _, req := range batch {
				c.remove(req)
			}
			return sent, ctx.Err()
		}
		err := c.writeRequests(batch)
		<-c.wmu
		if err != nil {
			c.shutdown(connFailed(err))
		}
		sent += n
	}
	return sent, nil
}

// acquire takes n in-flight slots, waiting while they are taken. A slot
// is only ever held by a request on the wire or about to be, so it is
// released without waiting on anyone; once the connection is down the
// reader releases every pending request's.
func (c *Client) acquire(ctx context.Context, n int64) error {
	if c.slots.TryAcquire(n) {
		return nil
	}
	select {
	case <-c.dead:
		return c.connErr()
	default:
	}
	if err := c.slots.Acquire(ctx, n); err != nil {
		return err
	}
	return nil
}

// writeRequests writes the headers and payloads of reqs with one writev;
// the caller holds the writer's lock.
func (c *Client) writeRequests(reqs []*request) error {
	if len(reqs) == 1 {
		return c.writeRequest(reqs[0])
	}
	hdrs := make([]byte, len(reqs)*requestHeaderLen)
	bufs := make(net.Buffers, 0, 2*len(reqs))
	for i, req := range reqs {
		h := hdrs[i*requestHeaderLen : (i+1)*requestHeaderLen]
		putRequest(h, req.cmd, req.flags, req.cookie, req.off, req.length)
		bufs = append(bufs, h)
		if len(req.wdata) > 0 {
			bufs = append(bufs, req.wdata)
		}
	}
	return c.writeBuffers(bufs)
}

// writeBuffers writes bufs with one writev where the socket has room.
func (c *Client) writeBuffers(bufs net.Buffers) error {
	if c.raw != nil {
		return c.raw.writev(bufs)
	}
	_, err := bufs.WriteTo(c.conn)
	return err
}

// writeRequest writes the header and any payload of req; the caller holds
// the writer's lock. The payload goes out with one writev where possible.
func (c *Client) writeRequest(req *request) error {
	var hdr [requestHeaderLen]byte
	putRequest(hdr[:], req.cmd, req.flags, req.cookie, req.off, req.length)
	if len(req.wdata) == 0 {
		if c.raw != nil {
			return c.raw.writev([][]byte{hdr[:]})
		}
		_, err := c.conn.Write(hdr[:])
		return err
	}
	return c.writeBuffers(net.Buffers{hdr[:], req.wdata})
}

// wait blocks until req completes or ctx ends. On ctx's end the request is
// abandoned: the reader discards its reply when it comes, and wait returns
// only once the reader no longer touches req.rbuf.
func (c *Client) wait(ctx context.Context, req *request) error {
	select {
	case <-req.done:
		return req.err
	case <-ctx.Done():
	}
	c.mu.Lock()
	req.abandoned = true
	for req.busy {
		c.idle.Wait()
	}
	c.mu.Unlock()
	select {
	case <-req.done:
		return req.err
	default:
		return ctx.Err()
	}
}

// waitAll waits for every request and returns the first error; on ctx's
// end it abandons those still outstanding.
func (c *Client) waitAll(ctx context.Context, reqs []*request) error {
	var first error
	for _, r := range reqs {
		if err := c.wait(ctx, r); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// remove takes req out of pending and completes it, unless someone else
// already did. It reports whether it did.
func (c *Client) remove(req *request) bool {
	c.mu.Lock()
	_, ok := c.pending[req.cookie]
	delete(c.pending, req.cookie)
	c.mu.Unlock()
	if ok {
		c.slots.Release(1)
		req.complete()
	}
	return ok
}

// claim lets the reader write into req.rbuf unless the caller abandoned it.
func (c *Client) claim(req *request) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if req.abandoned {
		return false
	}
	req.busy = true
	return true
}

func (c *Client) unclaim(req *request) {
	c.mu.Lock()
	req.busy = false
	if req.abandoned {
		c.idle.Broadcast()
	}
	c.mu.Unlock()
}
