package nbd

import (
	"errors"
	"io"
)

// readLoop is the connection's only reader. It runs from the handshake to
// the connection's end, hands every reply to the request it answers, and
// on the way out fails whatever is still pending. Close waits for it.
func (c *Client) readLoop() {
	defer close(c.readerDone)
	var hdr [chunkHeaderLen]byte
	var err error
	for err == nil {
		err = c.readReply(hdr[:])
	}
	c.shutdown(connFailed(err))
	cause := c.connErr()
	if !errors.Is(cause, ErrClosed) {
		c.log.Warn("nbd connection failed", "err", cause)
	}
	c.mu.Lock()
	reqs := c.pending
	c.pending = make(map[uint64]*request)
	c.mu.Unlock()
	for _, r := range reqs {
		r.err = cause
		c.slots.Release(1)
		r.complete()
	}
}

// readReply reads and dispatches one simple reply or structured chunk. Any
// error it returns ends the connection.
func (c *Client) readReply(hdr []byte) error {
	if _, err := io.ReadFull(c.br, hdr[:simpleHeaderLen]); err != nil {
		return err
	}
	switch m := be.Uint32(hdr); m {
	case magicSimpleReply:
		return c.simpleReply(hdr[:simpleHeaderLen])
	case magicStructReply:
		if _, err := io.ReadFull(c.br, hdr[simpleHeaderLen:chunkHeaderLen]); err != nil {
			return err
		}
		return c.chunk(hdr[:chunkHeaderLen])
	default:
		return protocolErr("reply magic %#x", m)
	}
}

func (c *Client) lookup(cookie uint64) (*request, error) {
	c.mu.Lock()
	req := c.pending[cookie]
	c.mu.Unlock()
	if req == nil {
		return nil, protocolErr("reply to unknown cookie %d", cookie)
	}
	return req, nil
}

func (c *Client) simpleReply(hdr []byte) error {
	errno, cookie, err := parseSimpleHeader(hdr)
	if err != nil {
		return err
	}
	req, err := c.lookup(cookie)
	if err != nil {
		return err
	}
	if errno != 0 {
		req.err = c.serverError(req, chunkErr{errno: errno})
		c.remove(req)
		return nil
	}
	if req.cmd == cmdRead {
		if c.neg.structured {
			return protocolErr("simple reply with data to a read after structured replies were agreed")
		}
		if err := c.readInto(req, 0, int(req.length)); err != nil {
			return err
		}
		req.covered.add(req.off, req.off+uint64(req.length))
	}
	c.finish(req)
	return nil
}

func (c *Client) chunk(hdr []byte) error {
	h, err := parseChunkHeader(hdr)
	if err != nil {
		return err
	}
	req, err := c.lookup(h.cookie)
	if err != nil {
		return err
	}
	switch h.typ {
	case chunkNone:
	case chunkOffsetData:
		err = c.offsetData(req, h)
	case chunkOffsetHole:
		err = c.offsetHole(req, h)
	case chunkBlockStatus:
		err = c.blockStatus(req, h)
	default: // an error chunk, known or not
		err = c.errorChunk(req, h)
	}
	if err != nil {
		return err
	}
	if h.done() {
		c.finish(req)
	}
	return nil
}

func (c *Client) offsetData(req *request, h chunkHeader) error {
	if req.cmd != cmdRead {
		return protocolErr("data chunk in reply to %s", cmdName(req.cmd))
	}
	var b [8]byte
	if _, err := io.ReadFull(c.br, b[:]); err != nil {
		return err
	}
	off, n := be.Uint64(b[:]), uint64(h.length-8)
	if !checkWithin(req.off, req.length, off, n) || !req.covered.add(off, off+n) {
		return protocolErr("data chunk %d+%d outside read %d+%d or overlapping", off, n, req.off, req.length)
	}
	return c.readInto(req, int(off-req.off), int(n))
}

func (c *Client) offsetHole(req *request, h chunkHeader) error {
	if req.cmd != cmdRead {
		return protocolErr("hole chunk in reply to %s", cmdName(req.cmd))
	}
	var b [12]byte
	if _, err := io.ReadFull(c.br, b[:]); err != nil {
		return err
	}
	off, size, err := parseOffsetHole(b[:])
	if err != nil {
		return err
	}
	if !checkWithin(req.off, req.length, off, uint64(size)) || !req.covered.add(off, off+uint64(size)) {
		return protocolErr("hole chunk %d+%d outside read %d+%d or overlapping", off, size, req.off, req.length)
	}
	if c.claim(req) {
		clear(req.rbuf[off-req.off : off-req.off+uint64(size)])
		c.unclaim(req)
	}
	return nil
}

func (c *Client) blockStatus(req *request, h chunkHeader) error {
	if req.cmd != cmdBlockStatus {
		return protocolErr("block status chunk in reply to %s", cmdName(req.cmd))
	}
	p := make([]byte, h.length)
	if _, err := io.ReadFull(c.br, p); err != nil {
		return err
	}
	id, exts, err := parseBlockStatus(p, req.off)
	if err != nil {
		return err
	}
	if !c.neg.haveMeta || id != c.neg.metaID {
		return nil // a context we did not select; ignore it
	}
	if req.status {
		return protocolErr("two block status chunks for one context")
	}
	req.extents, req.status = exts, true
	return nil
}

func (c *Client) errorChunk(req *request, h chunkHeader) error {
	p := make([]byte, h.length)
	if _, err := io.ReadFull(c.br, p); err != nil {
		return err
	}
	e, err := parseErrorChunk(h.typ, p)
	if err != nil {
		return err
	}
	if req.err == nil {
		req.err = c.serverError(req, e)
	}
	return nil
}

// readInto reads n bytes of payload into req.rbuf at at, or discards them
// when the caller has abandoned the request.
func (c *Client) readInto(req *request, at, n int) error {
	if !c.claim(req) {
		_, err := c.br.Discard(n)
		return err
	}
	defer c.unclaim(req)
	_, err := io.ReadFull(c.br, req.rbuf[at:at+n])
	return err
}

// finish checks that a successful reply was complete and completes req.
func (c *Client) finish(req *request) {
	if req.err == nil {
		switch {
		case req.cmd == cmdRead && req.covered.total != uint64(req.length):
			req.err = protocolErr("read %d+%d answered with %d bytes", req.off, req.length, req.covered.total)
		case req.cmd == cmdBlockStatus && !req.status:
			req.err = protocolErr("block status reply without %s", metaBaseAllocation)
		}
	}
	c.remove(req)
}

func (c *Client) serverError(req *request, e chunkErr) *Error {
	err := &Error{Op: cmdName(req.cmd), Offset: int64(req.off), Length: int64(req.length), Errno: e.errno, Msg: e.msg}
	if e.hasOff {
		err.Offset = int64(e.offset)
	}
	return err
}
