package nbd

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "record testdata/session-*.bin from real servers")

// Fuzz targets. The parsers are pure functions over bytes; FuzzSession
// drives the whole client (handshake, reader, demultiplexer) with what a
// server could send. Seeds are built here and recorded from qemu-nbd and
// nbdkit into testdata (see TestSessionSeeds).

func FuzzParseChunk(f *testing.F) {
	w := func() *wire { return &wire{} }
	f.Add(w().chunk(replyFlagDone, chunkNone, 1, nil).bytes())
	f.Add(w().chunk(0, chunkOffsetData, 1, dataPayload(4096, []byte("data"))).bytes())
	f.Add(w().chunk(0, chunkOffsetHole, 2, holePayload(0, 512)).bytes())
	f.Add(w().chunk(replyFlagDone, chunkBlockStatus, 3, statusPayload(1, 4096, 3, 8192, 0)).bytes())
	f.Add(w().chunk(replyFlagDone, chunkError, 4, errPayload(EIO, "bad sector")).bytes())
	f.Add(w().chunk(replyFlagDone, chunkErrorOffset, 5, errPayload(ENOSPC, "full", 1<<20)).bytes())
	f.Add(w().chunk(replyFlagDone, chunkErrBit|42, 6, errPayload(EINVAL, "")).bytes())
	f.Add(w().simple(EIO, 7, nil).bytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) >= simpleHeaderLen {
			_, _, _ = parseSimpleHeader(b[:simpleHeaderLen])
		}
		if len(b) < chunkHeaderLen {
			return
		}
		h, err := parseChunkHeader(b[:chunkHeaderLen])
		if err != nil {
			return
		}
		p := b[chunkHeaderLen:]
		if uint32(len(p)) > h.length {
			p = p[:h.length]
		}
		switch {
		case h.typ == chunkOffsetHole:
			if off, n, err := parseOffsetHole(p); err == nil && n == 0 {
				t.Fatalf("hole %d+0 accepted", off)
			}
		case h.typ == chunkBlockStatus:
			checkBlockStatus(t, p, 0)
		case h.typ&chunkErrBit != 0:
			if e, err := parseErrorChunk(h.typ, p); err == nil {
				if e.errno == 0 || len(e.msg) > len(p) {
					t.Fatalf("error chunk parsed as %+v from %d bytes", e, len(p))
				}
			}
		}
	})
}

func FuzzParseBlockStatus(f *testing.F) {
	f.Add(statusPayload(1, 4096, 3), uint64(0), int64(4096))
	f.Add(statusPayload(1, 512, 0, 512, 0, 1024, 2, 0xffffffff, 1), uint64(1<<40), int64(1<<40+2000))
	f.Add(statusPayload(7, 0, 0), uint64(0), int64(1))
	f.Add(statusPayload(7, 100, 0x80000003, 100, 3), uint64(1<<63-150), int64(1<<62))
	f.Fuzz(func(t *testing.T, p []byte, base uint64, end int64) {
		checkBlockStatus(t, p, base)
		if base >= 1<<62 || end <= int64(base) {
			return
		}
		_, exts, err := parseBlockStatus(p, base)
		if err != nil {
			return
		}
		merged := appendExtents(nil, exts, end)
		pos := int64(base)
		for i, e := range merged {
			if e.Offset != pos || e.Length <= 0 || e.End() > end || e.Flags&^(StateHole|StateZero) != 0 {
				t.Fatalf("merged extent %d %+v after %d (end %d)", i, e, pos, end)
			}
			if i > 0 && merged[i-1].Flags == e.Flags {
				t.Fatalf("neighbours %d and %d not merged", i-1, i)
			}
			pos = e.End()
		}
	})
}

// checkBlockStatus checks what parseBlockStatus promises when it accepts p.
func checkBlockStatus(t *testing.T, p []byte, base uint64) {
	_, exts, err := parseBlockStatus(p, base)
	if err != nil {
		return
	}
	if len(exts) == 0 || len(exts) != (len(p)-4)/8 {
		t.Fatalf("%d extents from %d bytes", len(exts), len(p))
	}
	pos := base
	for _, e := range exts {
		if uint64(e.Offset) != pos || e.Length <= 0 || e.End() < e.Offset {
			t.Fatalf("extent %+v after %d", e, pos)
		}
		pos = uint64(e.End())
	}
}

func FuzzParseOptionReply(f *testing.F) {
	w := func() *wire { return &wire{} }
	f.Add(w().optReply(optStructuredReply, repAck, nil).bytes())
	f.Add(w().metaContext(1, metaBaseAllocation).bytes())
	f.Add(w().infoExport(1<<30, 0x4ed).bytes())
	f.Add(w().infoBlockSize(512, 4096, 32<<20).bytes())
	f.Add(w().infoBlockSize(3, 4096, 1).bytes())
	f.Add(w().optReply(optGo, repErrUnknown, []byte("export 'x' not present")).bytes())
	f.Add(w().optReply(optGo, repInfo, []byte{0, 1, 'v', 'd', 'a'}).bytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < optReplyHdrLen {
			return
		}
		r, err := parseOptReplyHeader(b[:optReplyHdrLen])
		if err != nil {
			return
		}
		if r.length > maxOptReplyLen {
			t.Fatalf("reply of %d bytes accepted", r.length)
		}
		p := b[optReplyHdrLen:]
		var info exportInfo
		if parseInfo(p, &info) == nil && info.haveBlockSize {
			if bs := info.bs; bs.Min == 0 || bs.Min&(bs.Min-1) != 0 || bs.Max < bs.Min {
				t.Fatalf("block size %+v accepted", bs)
			}
		}
		_, _, _ = parseMetaContext(p)
		_ = (&OptionError{Option: r.option, Reply: r.typ, Msg: string(p)}).Error()
	})
}

func FuzzSpans(f *testing.F) {
	f.Add([]byte{0, 4, 4, 8, 8, 12})
	f.Add([]byte{8, 12, 0, 4, 4, 8, 2, 3})
	f.Add([]byte{0, 10, 5, 6})
	f.Fuzz(func(t *testing.T, b []byte) {
		var s spans
		var bitmap [256]bool
		for i := 0; i+1 < len(b); i += 2 {
			lo, hi := uint64(b[i]), uint64(b[i+1])
			overlap := false
			for x := lo; x < hi; x++ {
				overlap = overlap || bitmap[x]
			}
			want := hi > lo && !overlap
			if got := s.add(lo, hi); got != want {
				t.Fatalf("add(%d, %d) = %v, want %v; spans %v", lo, hi, got, want, s.iv)
			}
			if want {
				for x := lo; x < hi; x++ {
					bitmap[x] = true
				}
			}
		}
		var total uint64
		for i, iv := range s.iv {
			if iv[0] >= iv[1] || (i > 0 && s.iv[i-1][1] >= iv[0]) {
				t.Fatalf("spans not sorted, disjoint and merged: %v", s.iv)
			}
			total += iv[1] - iv[0]
		}
		if total != s.total {
			t.Fatalf("total %d, intervals sum to %d", s.total, total)
		}
	})
}

func FuzzSession(f *testing.F) {
	for _, s := range sessionSeeds {
		b, err := os.ReadFile(filepath.Join("testdata", s.file))
		if err != nil {
			f.Fatalf("%v (record with go test -run TestSessionSeeds -update)", err)
		}
		f.Add(s.simple, b)
	}
	f.Add(false, builtSession())
	f.Fuzz(func(t *testing.T, simple bool, stream []byte) {
		reqs, err := replaySession(simple, stream)
		if err != nil {
			return
		}
		for _, r := range reqs {
			if r.err != nil {
				continue
			}
			if r.cmd == cmdRead && r.covered.total != uint64(r.length) {
				t.Fatalf("read succeeded with %d of %d bytes", r.covered.total, r.length)
			}
			if r.cmd == cmdBlockStatus && (len(r.extents) == 0 || r.extents[0].Offset != int64(r.off)) {
				t.Fatalf("block status succeeded with extents %v", r.extents)
			}
		}
	})
}

// sessionRequests is what FuzzSession and the recorded seeds ask of a
// server of at least 1 MiB, in this order (cookies 1 to 4).
func sessionRequests() []*request {
	return []*request{
		{cmd: cmdRead, off: 0, length: 8 * KiB, rbuf: make([]byte, 8*KiB)},
		{cmd: cmdBlockStatus, off: 0, length: MiB},
		{cmd: cmdWrite, off: 64 * KiB, length: 4 * KiB, wdata: pattern(64*KiB, 4*KiB)},
		{cmd: cmdFlush},
	}
}

// builtSession is a hand-made server transcript answering sessionRequests.
func builtSession() []byte {
	w := (&wire{}).fullHandshake(MiB)
	w.chunk(0, chunkOffsetData, 1, dataPayload(0, pattern(0, 4*KiB))).
		chunk(replyFlagDone, chunkOffsetHole, 1, holePayload(4*KiB, 4*KiB)).
		chunk(replyFlagDone, chunkBlockStatus, 2, statusPayload(7, 64*KiB, 0, MiB-64*KiB, 3)).
		simple(0, 3, nil).
		chunk(replyFlagDone, chunkErrorOffset, 4, errPayload(EIO, "flush failed", 0))
	return w.bytes()
}

// replaySession runs the client over a server transcript: the handshake,
// then sessionRequests, with replies read from what follows. Requests are
// on the wire before the reader starts, so replay is deterministic.
func replaySession(simple bool, stream []byte) ([]*request, error) {
	conn := &replayConn{r: bytes.NewReader(stream)}
	opts := Options{DisableStructuredReplies: simple, Logger: discardLogger()}
	br := bufio.NewReaderSize(conn, 64<<10)
	h := &handshaker{r: br, w: io.Discard, opts: &opts}
	neg, err := h.handshake()
	if err != nil {
		return nil, err
	}
	c := newClient(conn, br, neg, opts)
	reqs := sessionRequests()
	ctx := context.Background()
	for _, r := range reqs {
		if err := c.start(ctx, r); err != nil {
			return nil, err
		}
	}
	go c.readLoop()
	for _, r := range reqs {
		_ = c.wait(ctx, r)
	}
	c.Close()
	return reqs, nil
}

// replayConn is a net.Conn that reads a transcript and swallows writes.
type replayConn struct{ r *bytes.Reader }

func (c *replayConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *replayConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *replayConn) Close() error                     { return nil }
func (c *replayConn) LocalAddr() net.Addr              { return nil }
func (c *replayConn) RemoteAddr() net.Addr             { return nil }
func (c *replayConn) SetDeadline(time.Time) error      { return nil }
func (c *replayConn) SetReadDeadline(time.Time) error  { return nil }
func (c *replayConn) SetWriteDeadline(time.Time) error { return nil }
