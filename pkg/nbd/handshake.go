package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// metaBaseAllocation is the metadata context block status reports.
const metaBaseAllocation = "base:allocation"

// negotiated is the outcome of the handshake.
type negotiated struct {
	info       exportInfo
	structured bool
	metaID     uint32
	haveMeta   bool
}

// handshaker runs the fixed newstyle negotiation over a buffered stream.
type handshaker struct {
	r    *bufio.Reader
	w    io.Writer
	conn net.Conn
	opts *Options
}

// handshake negotiates from the server's greeting to the transmission phase.
func (h *handshaker) handshake() (negotiated, error) {
	var g [18]byte
	if _, err := io.ReadFull(h.r, g[:16]); err != nil {
		return negotiated{}, fmt.Errorf("read greeting: %w", err)
	}
	if m := be.Uint64(g[:]); m != magicNBD {
		return negotiated{}, protocolErr("greeting magic %#x: not an NBD server", m)
	}
	switch m := be.Uint64(g[8:]); m {
	case magicIHaveOpt:
	case magicOldstyle:
		return negotiated{}, fmt.Errorf("%w: oldstyle negotiation", ErrUnsupported)
	default:
		return negotiated{}, protocolErr("greeting magic %#x", m)
	}
	if _, err := io.ReadFull(h.r, g[16:]); err != nil {
		return negotiated{}, fmt.Errorf("read greeting: %w", err)
	}
	hsFlags := be.Uint16(g[16:])
	var cflags uint32
	if hsFlags&hsFixedNewstyle != 0 {
		cflags |= clientFixedNewstyle
	}
	if hsFlags&hsNoZeroes != 0 {
		cflags |= clientNoZeroes
	}
	if err := h.write(be.AppendUint32(nil, cflags)); err != nil {
		return negotiated{}, err
	}
	if h.opts.TLS != nil {
		if hsFlags&hsFixedNewstyle == 0 {
			return negotiated{}, fmt.Errorf("%w: TLS needs fixed newstyle negotiation", ErrUnsupported)
		}
		if err := h.startTLS(); err != nil {
			return negotiated{}, err
		}
	}
	if hsFlags&hsFixedNewstyle == 0 {
		h.opts.Logger.Debug("server speaks plain newstyle; using NBD_OPT_EXPORT_NAME")
		return h.exportName(hsFlags&hsNoZeroes != 0, negotiated{})
	}
	return h.options(hsFlags&hsNoZeroes != 0)
}

// startTLS sends NBD_OPT_STARTTLS and, once the server acknowledges it,
// runs the TLS handshake; the rest of the negotiation and the transmission
// phase go through the TLS connection.
func (h *handshaker) startTLS() error {
	if err := h.sendOption(optStartTLS, nil); err != nil {
		return err
	}
	r, p, err := h.readReply(optStartTLS)
	if err != nil {
		return err
	}
	if r.typ != repAck {
		if r.isErr() {
			return &OptionError{Option: optStartTLS, Reply: r.typ, Msg: string(p)}
		}
		return protocolErr("reply type %d to NBD_OPT_STARTTLS", r.typ)
	}
	if h.r.Buffered() > 0 {
		return protocolErr("%d bytes after the NBD_OPT_STARTTLS acknowledgement", h.r.Buffered())
	}
	tc := tls.Client(h.conn, h.opts.TLS)
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	h.conn, h.w = tc, tc
	h.r = bufio.NewReaderSize(tc, 64<<10)
	h.opts.Logger.Debug("nbd TLS established", "version", tls.VersionName(tc.ConnectionState().Version))
	return nil
}

// options sends the options of fixed newstyle and ends with NBD_OPT_GO.
func (h *handshaker) options(noZeroes bool) (negotiated, error) {
	var n negotiated
	if !h.opts.DisableStructuredReplies {
		ok, err := h.simpleOption(optStructuredReply, nil)
		if err != nil {
			return n, err
		}
		n.structured = ok
	}
	if n.structured && !h.opts.DisableBlockStatus {
		if err := h.setMetaContext(&n); err != nil {
			return n, err
		}
	}
	err := h.goOption(&n)
	var oe *OptionError
	if errors.As(err, &oe) && oe.Reply == repErrUnsup {
		h.opts.Logger.Debug("server lacks NBD_OPT_GO; using NBD_OPT_EXPORT_NAME")
		return h.exportName(noZeroes, n)
	}
	return n, err
}

// simpleOption sends an option answered by a single ACK. It reports false
// when the server refuses it with any error but shutdown.
func (h *handshaker) simpleOption(opt uint32, data []byte) (bool, error) {
	if err := h.sendOption(opt, data); err != nil {
		return false, err
	}
	r, p, err := h.readReply(opt)
	if err != nil {
		return false, err
	}
	switch {
	case r.typ == repAck:
		return true, nil
	case r.typ == repErrShutdown || r.typ == repErrTLSReqd:
		return false, &OptionError{Option: opt, Reply: r.typ, Msg: string(p)}
	case r.isErr():
		h.opts.Logger.Debug("server refused option", "option", optName(opt), "error", (&OptionError{Option: opt, Reply: r.typ, Msg: string(p)}).Error())
		return false, nil
	}
	return false, protocolErr("reply type %d to %s", r.typ, optName(opt))
}

// setMetaContext selects base:allocation, or Options.MetaContext. A
// refusal leaves block status off.
func (h *handshaker) setMetaContext(n *negotiated) error {
	meta := metaBaseAllocation
	if h.opts.MetaContext != "" {
		meta = h.opts.MetaContext
	}
	name := []byte(h.opts.ExportName)
	data := be.AppendUint32(nil, uint32(len(name)))
	data = append(data, name...)
	data = be.AppendUint32(data, 1)
	data = be.AppendUint32(data, uint32(len(meta)))
	data = append(data, meta...)
	if err := h.sendOption(optSetMetaContext, data); err != nil {
		return err
	}
	for {
		r, p, err := h.readReply(optSetMetaContext)
		if err != nil {
			return err
		}
		switch {
		case r.typ == repMetaContext:
			id, ctxName, err := parseMetaContext(p)
			if err != nil {
				return err
			}
			if ctxName == meta {
				n.metaID, n.haveMeta = id, true
			}
		case r.typ == repAck:
			return nil
		case r.isErr():
			n.haveMeta = false // a failed SET_META_CONTEXT selects nothing
			h.opts.Logger.Debug("server refused the metadata context", "context", meta, "reply", r.typ, "message", string(p))
			if r.typ == repErrShutdown || r.typ == repErrTLSReqd {
				return &OptionError{Option: optSetMetaContext, Reply: r.typ, Msg: string(p)}
			}
			return nil
		default:
			return protocolErr("reply type %d to NBD_OPT_SET_META_CONTEXT", r.typ)
		}
	}
}

// goOption sends NBD_OPT_GO asking for block size constraints.
func (h *handshaker) goOption(n *negotiated) error {
	name := []byte(h.opts.ExportName)
	data := be.AppendUint32(nil, uint32(len(name)))
	data = append(data, name...)
	data = be.AppendUint16(data, 1)
	data = be.AppendUint16(data, infoBlockSize)
	if err := h.sendOption(optGo, data); err != nil {
		return err
	}
	for {
		r, p, err := h.readReply(optGo)
		if err != nil {
			return err
		}
		switch {
		case r.typ == repInfo:
			if err := parseInfo(p, &n.info); err != nil {
				return err
			}
		case r.typ == repAck:
			if !n.info.haveExport {
				return protocolErr("NBD_OPT_GO acknowledged without NBD_INFO_EXPORT")
			}
			return nil
		case r.isErr():
			return &OptionError{Option: optGo, Reply: r.typ, Msg: string(p)}
		default:
			return protocolErr("reply type %d to NBD_OPT_GO", r.typ)
		}
	}
}

// exportName ends negotiation the old way. The server closes the connection
// instead of answering when it has no such export.
func (h *handshaker) exportName(noZeroes bool, n negotiated) (negotiated, error) {
	if err := h.sendOption(optExportName, []byte(h.opts.ExportName)); err != nil {
		return n, err
	}
	size := 10
	if !noZeroes {
		size += 124
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(h.r, b); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return n, fmt.Errorf("%w %q: server closed the connection after NBD_OPT_EXPORT_NAME", ErrUnknownExport, h.opts.ExportName)
		}
		return n, fmt.Errorf("read NBD_OPT_EXPORT_NAME reply: %w", err)
	}
	n.info.size, n.info.flags, n.info.haveExport = be.Uint64(b), be.Uint16(b[8:]), true
	return n, nil
}

func (h *handshaker) sendOption(opt uint32, data []byte) error {
	b := make([]byte, 0, 16+len(data))
	b = be.AppendUint64(b, magicIHaveOpt)
	b = be.AppendUint32(b, opt)
	b = be.AppendUint32(b, uint32(len(data)))
	return h.write(append(b, data...))
}

func (h *handshaker) write(b []byte) error {
	if _, err := h.w.Write(b); err != nil {
		return fmt.Errorf("write handshake: %w", err)
	}
	return nil
}

// readReply reads one option reply to opt and its payload.
func (h *handshaker) readReply(opt uint32) (optReply, []byte, error) {
	var hdr [optReplyHdrLen]byte
	if _, err := io.ReadFull(h.r, hdr[:]); err != nil {
		return optReply{}, nil, fmt.Errorf("read reply to %s: %w", optName(opt), err)
	}
	r, err := parseOptReplyHeader(hdr[:])
	if err != nil {
		return r, nil, err
	}
	if r.option != opt {
		return r, nil, protocolErr("reply to %s while waiting for %s", optName(r.option), optName(opt))
	}
	p := make([]byte, r.length)
	if _, err := io.ReadFull(h.r, p); err != nil {
		return r, nil, fmt.Errorf("read reply to %s: %w", optName(opt), err)
	}
	return r, p, nil
}

// withDeadline makes blocking I/O on conn return once ctx has ended, by
// moving the connection's deadline into the past, or by closing conn if it
// has no deadlines (an SSH channel has none); ctx.Err() is then set when
// the I/O fails. The returned stop undoes the deadline.
func withDeadline(ctx context.Context, conn net.Conn) (stop func()) {
	fired := make(chan struct{})
	stopAfter := context.AfterFunc(ctx, func() {
		defer close(fired)
		if conn.SetDeadline(time.Unix(1, 0)) != nil {
			conn.Close()
		}
	})
	return func() {
		if !stopAfter() {
			<-fired // the callback started: wait for it before clearing
		}
		_ = conn.SetDeadline(time.Time{})
	}
}
