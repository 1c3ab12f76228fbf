package nbd

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// wire builds what a server sends, for fake servers and fuzz seeds.
type wire struct{ b []byte }

func (w *wire) bytes() []byte { return w.b }

func (w *wire) greeting(hsFlags uint16) *wire {
	w.b = be.AppendUint64(w.b, magicNBD)
	w.b = be.AppendUint64(w.b, magicIHaveOpt)
	w.b = be.AppendUint16(w.b, hsFlags)
	return w
}

func (w *wire) optReply(opt, typ uint32, payload []byte) *wire {
	w.b = be.AppendUint64(w.b, magicOptReply)
	w.b = be.AppendUint32(w.b, opt)
	w.b = be.AppendUint32(w.b, typ)
	w.b = be.AppendUint32(w.b, uint32(len(payload)))
	w.b = append(w.b, payload...)
	return w
}

func (w *wire) metaContext(id uint32, name string) *wire {
	return w.optReply(optSetMetaContext, repMetaContext, append(be.AppendUint32(nil, id), name...))
}

func (w *wire) infoExport(size uint64, flags uint16) *wire {
	p := be.AppendUint16(nil, infoExport)
	p = be.AppendUint64(p, size)
	return w.optReply(optGo, repInfo, be.AppendUint16(p, flags))
}

func (w *wire) infoBlockSize(minimum, preferred, maximum uint32) *wire {
	p := be.AppendUint16(nil, infoBlockSize)
	p = be.AppendUint32(p, minimum)
	p = be.AppendUint32(p, preferred)
	return w.optReply(optGo, repInfo, be.AppendUint32(p, maximum))
}

// fullHandshake is a server's side of a successful negotiation of size
// bytes with structured replies and base:allocation as context 7.
func (w *wire) fullHandshake(size uint64) *wire {
	return w.greeting(hsFixedNewstyle|hsNoZeroes).
		optReply(optStructuredReply, repAck, nil).
		metaContext(7, metaBaseAllocation).optReply(optSetMetaContext, repAck, nil).
		infoBlockSize(1, 4096, 32*MiB).infoExport(size, 0x4ed).optReply(optGo, repAck, nil)
}

func (w *wire) simple(errno uint32, cookie uint64, data []byte) *wire {
	w.b = be.AppendUint32(w.b, magicSimpleReply)
	w.b = be.AppendUint32(w.b, errno)
	w.b = be.AppendUint64(w.b, cookie)
	w.b = append(w.b, data...)
	return w
}

func (w *wire) chunk(flags, typ uint16, cookie uint64, payload []byte) *wire {
	w.b = be.AppendUint32(w.b, magicStructReply)
	w.b = be.AppendUint16(w.b, flags)
	w.b = be.AppendUint16(w.b, typ)
	w.b = be.AppendUint64(w.b, cookie)
	w.b = be.AppendUint32(w.b, uint32(len(payload)))
	w.b = append(w.b, payload...)
	return w
}

func dataPayload(off uint64, data []byte) []byte {
	return append(be.AppendUint64(nil, off), data...)
}

func holePayload(off uint64, n uint32) []byte {
	return be.AppendUint32(be.AppendUint64(nil, off), n)
}

// statusPayload is a block status chunk for context id; pairs are length,
// flags, length, flags, …
func statusPayload(id uint32, pairs ...uint32) []byte {
	p := be.AppendUint32(nil, id)
	for _, v := range pairs {
		p = be.AppendUint32(p, v)
	}
	return p
}

func errPayload(errno uint32, msg string, off ...uint64) []byte {
	p := be.AppendUint32(nil, errno)
	p = be.AppendUint16(p, uint16(len(msg)))
	p = append(p, msg...)
	for _, o := range off {
		p = be.AppendUint64(p, o)
	}
	return p
}

// fake is the server end of a net.Pipe, driven by a test's script.
type fake struct {
	t    *testing.T
	conn net.Conn
}

// option reads one option the client sends.
func (f *fake) option() (opt uint32, data []byte) {
	var h [16]byte
	if _, err := io.ReadFull(f.conn, h[:]); err != nil {
		f.t.Errorf("fake server: read option: %v", err)
		return 0, nil
	}
	data = make([]byte, be.Uint32(h[12:]))
	if _, err := io.ReadFull(f.conn, data); err != nil {
		f.t.Errorf("fake server: read option data: %v", err)
	}
	return be.Uint32(h[8:]), data
}

// clientFlags reads the client's 32-bit flags after the greeting.
func (f *fake) clientFlags() uint32 {
	var b [4]byte
	if _, err := io.ReadFull(f.conn, b[:]); err != nil {
		f.t.Errorf("fake server: read client flags: %v", err)
	}
	return be.Uint32(b[:])
}

// request reads one request; it returns ok false when the client is gone.
func (f *fake) request() (cmd uint16, cookie, off uint64, length uint32, ok bool) {
	var h [requestHeaderLen]byte
	if _, err := io.ReadFull(f.conn, h[:]); err != nil {
		return 0, 0, 0, 0, false
	}
	cmd, cookie, off, length = be.Uint16(h[6:]), be.Uint64(h[8:]), be.Uint64(h[16:]), be.Uint32(h[24:])
	if cmd == cmdWrite {
		if _, err := io.CopyN(io.Discard, f.conn, int64(length)); err != nil {
			return 0, 0, 0, 0, false
		}
	}
	return cmd, cookie, off, length, true
}

func (f *fake) send(b []byte) {
	if _, err := f.conn.Write(b); err != nil {
		f.t.Errorf("fake server: write: %v", err)
	}
}

// negotiate plays fullHandshake against the client's options.
func (f *fake) negotiate(size uint64) {
	hs := (&wire{}).fullHandshake(size).bytes()
	f.send(hs[:18])
	f.clientFlags()
	rest := hs[18:]
	for _, n := range []int{1, 2, 3} { // replies to SR, META, GO
		f.option()
		end := 0
		for i := 0; i < n; i++ {
			end += optReplyHdrLen + int(be.Uint32(rest[end+16:]))
		}
		f.send(rest[:end])
		rest = rest[end:]
	}
}

// startFake runs script as the server of a new client made with opts over
// a pipe. It returns the client's NewClient result; the script's goroutine
// is waited for when the test ends.
func startFake(t *testing.T, opts Options, script func(f *fake)) (*Client, error) {
	t.Helper()
	cconn, sconn := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer sconn.Close()
		script(&fake{t: t, conn: sconn})
	}()
	t.Cleanup(func() {
		sconn.Close()
		<-done
	})
	if opts.Logger == nil {
		opts.Logger = testkit.Logger(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := NewClient(ctx, cconn, opts)
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}
