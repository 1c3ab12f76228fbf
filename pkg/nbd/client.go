// Package nbd is a client of the Network Block Device protocol in pure Go.
//
// It speaks fixed newstyle negotiation with NBD_OPT_GO, structured replies
// and block status (base:allocation), and keeps many requests in flight on
// one connection: callers block in their own goroutine while a single
// reader goroutine hands each reply to the request it answers, reading
// data straight into the caller's buffer.
package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"golang.org/x/sync/semaphore"
)

// Options configure a client. The zero value asks for the default export
// with structured replies and block status.
type Options struct {
	// ExportName selects the export; "" is the server's default export.
	ExportName string
	// DisableStructuredReplies keeps to simple replies (and so no block
	// status and no sparse reads).
	DisableStructuredReplies bool
	// DisableBlockStatus skips selecting the base:allocation context.
	DisableBlockStatus bool
	// MetaContext is the metadata context block status reports instead of
	// base:allocation, e.g. "qemu:dirty-bitmap:backup-vda", whose flag
	// StateDirty marks the extents changed since a checkpoint. Only the
	// flag bits of the chosen context are returned.
	MetaContext string
	// MaxInFlight bounds the requests outstanding on the connection; calls
	// beyond it wait for a slot. 0 means 32.
	MaxInFlight int
	// MaxRequest is the largest read or write request sent: longer calls
	// are split into requests of this size, sent together. 0 means
	// DefaultMaxRequest; a negative value, the server's maximum. It is
	// rounded down to the server's minimum block size and capped at its
	// maximum.
	MaxRequest int
	// MaxWriteRequest, when not 0, is MaxRequest for writes alone, with
	// the same rules: a server that serves large reads from a fresh buffer
	// each (QEMU's) may still take writes in fewer, larger requests, which
	// cost both ends fewer wake-ups.
	MaxWriteRequest int
	// Logger receives debug records of the negotiation; nil discards them.
	Logger *slog.Logger
	// TLS, when set, upgrades the connection with NBD_OPT_STARTTLS before
	// any other option (fixed newstyle servers only, such as qemu-nbd
	// --tls-creds); every byte after the greeting is then encrypted. A
	// server that refuses STARTTLS fails the handshake: the client never
	// falls back to plain text.
	TLS *tls.Config
}

// BlockSize holds the server's size constraints. Offsets and lengths of
// requests must be multiples of Min; reads and writes are split at Max.
type BlockSize struct {
	Min       uint32
	Preferred uint32
	Max       uint32
}

// Flags are the export's transmission flags.
type Flags uint16

// Transmission flags.
const (
	FlagHasFlags        Flags = 1 << 0
	FlagReadOnly        Flags = 1 << 1
	FlagSendFlush       Flags = 1 << 2
	FlagSendFUA         Flags = 1 << 3
	FlagRotational      Flags = 1 << 4
	FlagSendTrim        Flags = 1 << 5
	FlagSendWriteZeroes Flags = 1 << 6
	FlagSendDF          Flags = 1 << 7
	FlagCanMultiConn    Flags = 1 << 8
	FlagSendCache       Flags = 1 << 10
	FlagSendFastZero    Flags = 1 << 11
)

// ReadOnly reports that the server refuses writes, trims and write zeroes.
func (f Flags) ReadOnly() bool { return f&FlagReadOnly != 0 }

// CanFlush reports that Flush is supported.
func (f Flags) CanFlush() bool { return f&FlagSendFlush != 0 }

// CanFUA reports that writes can ask to be persisted before the reply.
func (f Flags) CanFUA() bool { return f&FlagSendFUA != 0 }

// CanTrim reports that Trim is supported.
func (f Flags) CanTrim() bool { return f&FlagSendTrim != 0 }

// CanWriteZeroes reports that WriteZeroes (and ZeroNoHole) is supported.
func (f Flags) CanWriteZeroes() bool { return f&FlagSendWriteZeroes != 0 }

// CanFastZero reports that WriteZeroes accepts ZeroFast.
func (f Flags) CanFastZero() bool { return f&FlagSendFastZero != 0 }

// CanMultiConn reports that several connections to the export see each
// other's flushed writes, so a client may spread requests over them.
func (f Flags) CanMultiConn() bool { return f&FlagCanMultiConn != 0 }

// Client is a connection to one export. Its methods are safe for
// concurrent use; concurrent calls are pipelined on the connection.
type Client struct {
	conn     net.Conn
	br       *bufio.Reader
	raw      *rawIO // the socket's raw I/O; nil where the net package does it
	log      *slog.Logger
	neg      negotiated
	maxRead  uint32 // largest read request
	maxWrite uint32 // largest write request

	// slots has one unit per request in flight. A call split into k
	// requests waits for k at once, so it wakes once when they are free
	// rather than once per request that completes.
	slots     *semaphore.Weighted
	maxFlight int64
	wmu       chan struct{} // the request writer's lock, taken with ctx

	mu      sync.Mutex
	idle    *sync.Cond // signalled when an abandoned request's buffer is released
	pending map[uint64]*request
	cookie  uint64
	err     error         // why the connection is down, once it is
	dead    chan struct{} // closed when err is set

	readerDone chan struct{}
	closeOnce  sync.Once
}

// Dial connects to an NBD server on network "unix" or "tcp" and negotiates
// the export named in opts.
func Dial(ctx context.Context, network, addr string, opts Options) (*Client, error) {
	switch network {
	case "unix", "tcp", "tcp4", "tcp6":
	default:
		return nil, fmt.Errorf("nbd: dial: network %q is neither unix nor tcp", network)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("nbd: dial %s %s: %w", network, addr, err)
	}
	c, err := newClientConn(ctx, conn, opts)
	if err != nil {
		return nil, fmt.Errorf("nbd %s %s: %w", network, addr, err)
	}
	return c, nil
}

// NewClient negotiates over conn, which can be any stream such as a channel
// tunnelled through SSH. The client owns conn from then on, also when
// NewClient fails.
func NewClient(ctx context.Context, conn net.Conn, opts Options) (*Client, error) {
	c, err := newClientConn(ctx, conn, opts)
	if err != nil {
		return nil, fmt.Errorf("nbd: %w", err)
	}
	return c, nil
}

func newClientConn(ctx context.Context, conn net.Conn, opts Options) (*Client, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if len(opts.ExportName) > 4096 {
		conn.Close()
		return nil, fmt.Errorf("export name of %d bytes is longer than 4096", len(opts.ExportName))
	}
	if uc, ok := conn.(*net.UnixConn); ok {
		// Best effort: the kernel caps it at net.core.wmem_max.
		_ = uc.SetWriteBuffer(unixWriteBuffer)
	}
	br := bufio.NewReaderSize(conn, readBuffer)
	h := &handshaker{r: br, w: conn, conn: conn, opts: &opts}
	stop := withDeadline(ctx, conn)
	neg, err := h.handshake()
	stop()
	// After STARTTLS the client speaks through the TLS connection.
	conn, br = h.conn, h.r
	if err != nil {
		var oe *OptionError
		if errors.As(err, &oe) {
			_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
			_ = h.sendOption(optAbort, nil) // soft disconnect, as the spec asks
		}
		conn.Close()
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		return nil, fmt.Errorf("handshake: %w", err)
	}
	c := newClient(conn, br, neg, opts)
	c.useRawIO()
	go c.readLoop()
	c.log.Debug("nbd connected", "size", neg.info.size, "flags", fmt.Sprintf("%#x", neg.info.flags),
		"structured", neg.structured, "block_status", neg.haveMeta, "block_size", c.BlockSize())
	return c, nil
}

// newClient builds a client in the transmission phase; the caller starts
// its reader with go c.readLoop().
func newClient(conn net.Conn, br *bufio.Reader, neg negotiated, opts Options) *Client {
	if opts.MaxInFlight <= 0 {
		opts.MaxInFlight = defaultMaxFlight
	}
	c := &Client{
		conn:       conn,
		br:         br,
		log:        opts.Logger.With("export", opts.ExportName),
		neg:        neg,
		slots:      semaphore.NewWeighted(int64(opts.MaxInFlight)),
		maxFlight:  int64(opts.MaxInFlight),
		wmu:        make(chan struct{}, 1),
		pending:    make(map[uint64]*request),
		dead:       make(chan struct{}),
		readerDone: make(chan struct{}),
	}
	c.idle = sync.NewCond(&c.mu)
	c.maxRead = maxRequest(opts.MaxRequest, c.BlockSize())
	c.maxWrite = c.maxRead
	if opts.MaxWriteRequest != 0 {
		c.maxWrite = maxRequest(opts.MaxWriteRequest, c.BlockSize())
	}
	return c
}

// readBuffer is the size of the reader's buffer. A read reply's payload
// goes straight into the caller's buffer, except for what the read of the
// reply's header brought into this one along with it, which is copied: at
// 64 KiB a quarter of every 256 KiB reply was copied twice (about 300 MB
// per GiB read). 8 KiB still takes hundreds of the 16-byte replies to
// writes in one read.
const readBuffer = 8 << 10

// unixWriteBuffer is the send buffer asked for a unix socket. A unix
// stream queues what it sends against the sender's buffer, 208 KiB by
// default: less than one 256 KiB write request, so that every write
// blocked until the server had read part of it, and each split call (a 2
// MiB chunk is eight requests, written with one writev) took several
// wake-ups of both processes.
const unixWriteBuffer = 4 << 20

// DefaultMaxRequest is the request size a client uses unless told: 256
// KiB, as nbdcopy's. QEMU's NBD server (7.2, both qemu-nbd and a running
// VM's export) serves it from buffers it keeps, where a request of 2 MiB
// makes it map a fresh buffer every time (about 200k page faults per GiB)
// and halves the rate.
const DefaultMaxRequest = 256 << 10

// maxRequest is the size of the largest read or write request: want (0
// for DefaultMaxRequest, negative for the server's maximum) capped at the
// server's maximum and rounded down to its minimum block size.
func maxRequest(want int, bs BlockSize) uint32 {
	n := uint32(defaultMaxPayload)
	switch {
	case want == 0:
		n = DefaultMaxRequest
	case want > 0 && want < defaultMaxPayload:
		n = uint32(want)
	}
	n = min(n, bs.Max)
	if bs.Min > 1 {
		n = max(n&^(bs.Min-1), bs.Min)
	}
	return n
}

// Size is the export's size in bytes.
func (c *Client) Size() int64 { return int64(c.neg.info.size) }

// Flags are the export's transmission flags.
func (c *Client) Flags() Flags { return Flags(c.neg.info.flags) }

// BlockSize is the server's size constraints, or the protocol's defaults
// (1, 4096, 32 MiB) when it did not state them.
func (c *Client) BlockSize() BlockSize {
	if c.neg.info.haveBlockSize {
		return c.neg.info.bs
	}
	return BlockSize{Min: 1, Preferred: 4096, Max: defaultMaxPayload}
}

// StructuredReplies reports whether the server agreed to structured replies.
func (c *Client) StructuredReplies() bool { return c.neg.structured }

// CanBlockStatus reports whether BlockStatus and Extents can be used: the
// server selected the base:allocation context.
func (c *Client) CanBlockStatus() bool { return c.neg.haveMeta }

// Close shuts the connection down at once and waits for the reader
// goroutine to end. Requests still in flight fail with ErrClosed. When none
// are, it first tells the server it is going (NBD_CMD_DISC); Disconnect
// waits for them to finish so that it can.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		idle := c.err == nil && len(c.pending) == 0
		if c.err == nil {
			c.err = ErrClosed
			close(c.dead)
		}
		c.mu.Unlock()
		if idle {
			c.sendDisconnect()
		}
		c.shutdown(ErrClosed)
	})
	<-c.readerDone
	return nil
}

// sendDisconnect writes NBD_CMD_DISC unless a request is being written.
func (c *Client) sendDisconnect() {
	select {
	case c.wmu <- struct{}{}:
	default:
		return
	}
	defer func() { <-c.wmu }()
	_ = c.conn.SetWriteDeadline(time.Now().Add(time.Second))
	var hdr [requestHeaderLen]byte
	putRequest(hdr[:], cmdDisc, 0, 0, 0, 0)
	_, _ = c.conn.Write(hdr[:])
}

// Disconnect waits for the requests in flight to finish, or for ctx to end,
// then closes the client.
func (c *Client) Disconnect(ctx context.Context) error {
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-c.dead:
			cancel()
		case <-actx.Done():
		}
	}()
	var err error
	if c.slots.Acquire(actx, c.maxFlight) != nil {
		err = ctx.Err()
	}
	c.Close()
	return err
}

// shutdown marks the connection down with err (the first cause wins) and
// closes it, which ends the reader; the reader fails the pending requests.
func (c *Client) shutdown(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
		close(c.dead)
	}
	c.mu.Unlock()
	c.conn.Close()
}

// connErr is the error that requests get once the connection is down.
func (c *Client) connErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func connFailed(cause error) error {
	if errors.Is(cause, io.EOF) {
		cause = fmt.Errorf("server closed the connection: %w", cause)
	}
	return fmt.Errorf("%w: %w", ErrConnection, cause)
}
