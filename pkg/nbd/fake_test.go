package nbd

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"
)

// Tests of protocol corners real servers do not show, against a scripted
// server on a pipe.

func TestFakeHandshakeCorners(t *testing.T) {
	for _, tc := range []struct {
		name   string
		script func(f *fake)
		want   error
	}{
		{name: "oldstyle", want: ErrUnsupported, script: func(f *fake) {
			b := be.AppendUint64(be.AppendUint64(nil, magicNBD), magicOldstyle)
			b = be.AppendUint64(b, MiB)
			f.send(append(be.AppendUint32(b, 1), make([]byte, 124)...))
		}},
		{name: "not NBD", want: ErrProtocol, script: func(f *fake) {
			f.send([]byte("SSH-2.0-OpenSSH_9.2p1 Debian\r\n"))
		}},
		{name: "TLS required", want: ErrTLSRequired, script: func(f *fake) {
			f.send((&wire{}).greeting(hsFixedNewstyle).bytes())
			f.clientFlags()
			opt, _ := f.option()
			f.send((&wire{}).optReply(opt, repErrTLSReqd, []byte("use TLS")).bytes())
			if opt, _ := f.option(); opt != optAbort {
				f.t.Errorf("after TLS_REQD the client sent option %d, want NBD_OPT_ABORT", opt)
			}
		}},
		{name: "GO without export info", want: ErrProtocol, script: func(f *fake) {
			f.send((&wire{}).greeting(hsFixedNewstyle).bytes())
			f.clientFlags()
			f.option()
			f.send((&wire{}).optReply(optStructuredReply, repErrUnsup, nil).bytes())
			f.option()
			f.send((&wire{}).optReply(optGo, repAck, nil).bytes())
		}},
		{name: "reply to another option", want: ErrProtocol, script: func(f *fake) {
			f.send((&wire{}).greeting(hsFixedNewstyle).bytes())
			f.clientFlags()
			f.option()
			f.send((&wire{}).optReply(optGo, repAck, nil).bytes())
		}},
		{name: "export name refused by hanging up", want: ErrUnknownExport, script: func(f *fake) {
			f.send((&wire{}).greeting(0).bytes())
			f.clientFlags()
			if opt, _ := f.option(); opt != optExportName {
				f.t.Errorf("plain newstyle: option %d, want NBD_OPT_EXPORT_NAME", opt)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := startFake(t, Options{}, tc.script)
			if !errors.Is(err, tc.want) {
				t.Fatalf("NewClient = %v, want %v", err, tc.want)
			}
			t.Logf("error reads: %v", err)
		})
	}
}

// TestFakeStartTLSNoFallback: a client asked to use TLS sends STARTTLS
// first, and when the server will not, it stops; it never goes on in
// plain text, nor speaks TLS to a plain newstyle server.
func TestFakeStartTLSNoFallback(t *testing.T) {
	for _, tc := range []struct {
		name   string
		script func(f *fake)
		want   error
	}{
		{name: "STARTTLS unsupported", want: ErrUnsupported, script: func(f *fake) {
			f.send((&wire{}).greeting(hsFixedNewstyle).bytes())
			f.clientFlags()
			if opt, _ := f.option(); opt != optStartTLS {
				f.t.Errorf("first option %d, want NBD_OPT_STARTTLS", opt)
			}
			f.send((&wire{}).optReply(optStartTLS, repErrUnsup, []byte("no TLS here")).bytes())
			if opt, _ := f.option(); opt != optAbort {
				f.t.Errorf("after a refused STARTTLS the client sent option %d, want NBD_OPT_ABORT", opt)
			}
		}},
		{name: "plain newstyle", want: ErrUnsupported, script: func(f *fake) {
			f.send((&wire{}).greeting(0).bytes())
			f.clientFlags()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := startFake(t, Options{TLS: &tls.Config{MinVersion: tls.VersionTLS12}}, tc.script)
			if !errors.Is(err, tc.want) {
				t.Fatalf("NewClient = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestFakeGoUnsupportedFallsBack(t *testing.T) {
	c, err := startFake(t, Options{ExportName: "vda"}, func(f *fake) {
		f.send((&wire{}).greeting(hsFixedNewstyle).bytes())
		if fl := f.clientFlags(); fl != clientFixedNewstyle {
			f.t.Errorf("client flags %#x", fl)
		}
		f.option()
		f.send((&wire{}).optReply(optStructuredReply, repAck, nil).bytes())
		f.option()
		f.send((&wire{}).metaContext(3, metaBaseAllocation).optReply(optSetMetaContext, repAck, nil).bytes())
		f.option()
		f.send((&wire{}).optReply(optGo, repErrUnsup, nil).bytes())
		if opt, name := f.option(); opt != optExportName || string(name) != "vda" {
			f.t.Errorf("fallback sent option %d %q", opt, name)
		}
		reply := be.AppendUint16(be.AppendUint64(nil, 2*MiB), uint16(FlagHasFlags|FlagSendFlush))
		f.send(append(reply, make([]byte, 124)...))
		_, cookie, off, length, _ := f.request()
		f.send((&wire{}).chunk(replyFlagDone, chunkBlockStatus, cookie, statusPayload(3, uint32(length), StateZero)).bytes())
		_ = off
	})
	if err != nil {
		t.Fatal(err)
	}
	if c.Size() != 2*MiB || !c.Flags().CanFlush() || !c.CanBlockStatus() {
		t.Fatalf("size %d flags %#x block status %v", c.Size(), c.Flags(), c.CanBlockStatus())
	}
	exts, err := c.Extents(testCtx(t), 0, 2*MiB)
	if err != nil || len(exts) != 1 || exts[0] != (Extent{0, 2 * MiB, StateZero}) {
		t.Fatalf("Extents = %v, %v", exts, err)
	}
}

// serveOne negotiates, then answers each request with reply(cookie, off,
// length) until the client goes.
func serveOne(reply func(cookie, off uint64, length uint32) []byte) func(f *fake) {
	return func(f *fake) {
		f.negotiate(4 * MiB)
		for {
			cmd, cookie, off, length, ok := f.request()
			if !ok || cmd == cmdDisc {
				return
			}
			f.send(reply(cookie, off, length))
		}
	}
}

func TestFakeProtocolViolationsEndConnection(t *testing.T) {
	for _, tc := range []struct {
		name  string
		reply func(cookie, off uint64, length uint32) []byte
	}{
		{"unknown cookie", func(cookie, off uint64, n uint32) []byte {
			return (&wire{}).chunk(replyFlagDone, chunkNone, cookie+99, nil).bytes()
		}},
		{"data outside the read", func(cookie, off uint64, n uint32) []byte {
			return (&wire{}).chunk(replyFlagDone, chunkOffsetData, cookie, dataPayload(off+1, make([]byte, n))).bytes()
		}},
		{"overlapping chunks", func(cookie, off uint64, n uint32) []byte {
			return (&wire{}).chunk(0, chunkOffsetData, cookie, dataPayload(off, make([]byte, n))).
				chunk(replyFlagDone, chunkOffsetHole, cookie, holePayload(off, 1)).bytes()
		}},
		{"unknown chunk type", func(cookie, off uint64, n uint32) []byte {
			return (&wire{}).chunk(replyFlagDone, 77, cookie, nil).bytes()
		}},
		{"bad magic", func(cookie, off uint64, n uint32) []byte { return []byte("HTTP/1.1 400 Bad Request\r\n\r\n") }},
		{"simple reply to a structured read", func(cookie, off uint64, n uint32) []byte {
			return (&wire{}).simple(0, cookie, make([]byte, n)).bytes()
		}},
		{"block status chunk to a read", func(cookie, off uint64, n uint32) []byte {
			return (&wire{}).chunk(replyFlagDone, chunkBlockStatus, cookie, statusPayload(7, n, 0)).bytes()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := startFake(t, Options{}, serveOne(tc.reply))
			if err != nil {
				t.Fatal(err)
			}
			err = c.ReadAt(testCtx(t), make([]byte, 4096), 8192)
			if !errors.Is(err, ErrConnection) || !errors.Is(err, ErrProtocol) {
				t.Fatalf("ReadAt = %v, want ErrConnection and ErrProtocol", err)
			}
			t.Logf("error reads: %v", err)
		})
	}
}

func TestFakeReplyErrorsKeepConnection(t *testing.T) {
	calls := 0
	c, err := startFake(t, Options{}, serveOne(func(cookie, off uint64, n uint32) []byte {
		calls++
		switch calls {
		case 1: // success claimed, half the data missing
			return (&wire{}).chunk(replyFlagDone, chunkOffsetData, cookie, dataPayload(off, make([]byte, n/2))).bytes()
		case 2: // an error at an offset, with a message
			return (&wire{}).chunk(0, chunkOffsetData, cookie, dataPayload(off, make([]byte, n/2))).
				chunk(replyFlagDone, chunkErrorOffset, cookie, errPayload(ENOSPC, "disk full", off+uint64(n/2))).bytes()
		case 3: // an error type this client does not know
			return (&wire{}).chunk(replyFlagDone, chunkErrBit|9, cookie, errPayload(EOVERFLOW, "")).bytes()
		default: // data and hole chunks out of order
			data := pattern(int64(off), int(n/2))
			return (&wire{}).chunk(0, chunkOffsetHole, cookie, holePayload(off+uint64(n/2), n/2)).
				chunk(0, chunkOffsetData, cookie, dataPayload(off, data)).
				chunk(replyFlagDone, chunkNone, cookie, nil).bytes()
		}
	}))
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	p := make([]byte, 8192)
	var e *Error
	if err := c.ReadAt(ctx, p, 0); !errors.Is(err, ErrProtocol) || errors.Is(err, ErrConnection) {
		t.Errorf("short read = %v, want a request-level ErrProtocol", err)
	}
	if err := c.ReadAt(ctx, p, 0); !errors.As(err, &e) || e.Errno != ENOSPC || e.Offset != 4096 || e.Msg != "disk full" {
		t.Errorf("error offset chunk = %v", err)
	}
	if err := c.ReadAt(ctx, p, 0); !errors.As(err, &e) || e.Errno != EOVERFLOW {
		t.Errorf("unknown error chunk = %v", err)
	}
	for i := range p {
		p[i] = 0xee
	}
	if err := c.ReadAt(ctx, p, 8192); err != nil {
		t.Fatal(err)
	}
	want := append(pattern(8192, 4096), make([]byte, 4096)...)
	if !bytes.Equal(p, want) {
		t.Error("out-of-order data and hole chunks assembled wrongly")
	}
}

func TestFakeBlockStatusPartialReplies(t *testing.T) {
	// The server describes at most 1 MiB per reply, adds a context the
	// client did not select, and repeats flags across extents.
	c, err := startFake(t, Options{}, serveOne(func(cookie, off uint64, n uint32) []byte {
		return (&wire{}).chunk(0, chunkBlockStatus, cookie, statusPayload(99, n, 0)).
			chunk(replyFlagDone, chunkBlockStatus, cookie, statusPayload(7, 512*KiB, 0, 256*KiB, StateHole|StateZero|0x80, 256*KiB, StateHole|StateZero)).bytes()
	}))
	if err != nil {
		t.Fatal(err)
	}
	exts, err := c.Extents(testCtx(t), 0, 4*MiB-100)
	if err != nil {
		t.Fatal(err)
	}
	var want []Extent
	for o := int64(0); o < 4*MiB; o += MiB {
		want = append(want, Extent{o, 512 * KiB, 0}, Extent{o + 512*KiB, 512 * KiB, StateHole | StateZero})
	}
	want[len(want)-1].Length -= 100
	if fmt.Sprint(exts) != fmt.Sprint(want) {
		t.Errorf("Extents = %v\nwant %v", exts, want)
	}
}

func TestFakeHandshakeCancel(t *testing.T) {
	for _, tc := range []struct {
		name string
		wrap func(net.Conn) net.Conn
	}{
		{"deadlines", func(c net.Conn) net.Conn { return c }},
		{"no deadlines", func(c net.Conn) net.Conn { return noDeadlineConn{c} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cconn, sconn := net.Pipe() // the server never speaks
			defer sconn.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			start := time.Now()
			_, err := NewClient(ctx, tc.wrap(cconn), Options{})
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("NewClient = %v, want DeadlineExceeded", err)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("NewClient returned after %v", d)
			}
		})
	}
}

// noDeadlineConn is a connection without deadlines, as an SSH channel is.
type noDeadlineConn struct{ net.Conn }

func (noDeadlineConn) SetDeadline(time.Time) error      { return errors.ErrUnsupported }
func (noDeadlineConn) SetReadDeadline(time.Time) error  { return errors.ErrUnsupported }
func (noDeadlineConn) SetWriteDeadline(time.Time) error { return errors.ErrUnsupported }

func TestFakeCancelWhileWaitingForSlot(t *testing.T) {
	got := make(chan uint64, 4)
	c, err := startFake(t, Options{MaxInFlight: 1}, func(f *fake) {
		f.negotiate(4 * MiB)
		for { // never reply
			cmd, cookie, _, _, ok := f.request()
			if !ok || cmd == cmdDisc {
				return
			}
			got <- cookie
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() { first <- c.ReadAt(ctx, make([]byte, 512), 0) }()
	<-got // the first read holds the only slot
	short, cancelShort := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancelShort()
	if err := c.ReadAt(short, make([]byte, 512), 512); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("read waiting for a slot = %v, want DeadlineExceeded", err)
	}
	cancel()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Errorf("first read = %v, want Canceled", err)
	}
	select {
	case cookie := <-got:
		t.Errorf("request %d was sent without a free slot", cookie)
	default:
	}
}
