package nbd

import (
	"context"
	"net"
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

	// Owned by the reader goroutine until done is closed.
	err     error
	covered spans    // parts of a read the reply has covered
	extents []Extent // block status of the base:allocation context
	status  bool     // a block status chunk for our context arrived

	// Guarded by Client.mu.
	abandoned bool // the caller has gone; discard what arrives
	busy      bool // the reader is writing into rbuf
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
	select {
	case c.slots <- struct{}{}:
	case <-c.dead:
		return c.connErr()
	case <-ctx.Done():
		return ctx.Err()
	}
	req.done = make(chan struct{})
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		<-c.slots
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

// writeRequest writes the header and any payload of req; the caller holds
// the writer's lock. The payload goes out with one writev where possible.
func (c *Client) writeRequest(req *request) error {
	var hdr [requestHeaderLen]byte
	putRequest(hdr[:], req.cmd, req.flags, req.cookie, req.off, req.length)
	if len(req.wdata) == 0 {
		_, err := c.conn.Write(hdr[:])
		return err
	}
	bufs := net.Buffers{hdr[:], req.wdata}
	_, err := bufs.WriteTo(c.conn)
	return err
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
		<-c.slots
		close(req.done)
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
