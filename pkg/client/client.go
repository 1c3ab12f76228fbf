// Package client is the leader-aware Go client of the ferry.v1 API, the one
// ferryctl and other services use.
//
// A Client holds one gRPC connection per coordinator address it knows and
// sends each call to the node it believes leads. Its interceptors, installed
// on every connection, follow the cluster: when a node answers UNAVAILABLE
// with a leader hint (see grpcutil.LeaderFromError) the call is sent again
// to the hinted leader; when a node cannot be reached, to the next address;
// when no leader is elected yet, to the same node after a pause. Only calls
// that are safe to repeat are retried: reads, the idempotent writes
// (enable, disable, bandwidth, settings) and writes carrying a request_id.
// Retries are bounded (Options.MaxAttempts) and back off exponentially. A
// write whose request has an empty request_id gets a fresh one, the same
// in every attempt, so the server answers a repeat with the first answer.
//
// Reads are served by the node that answers, from its local ledger, but
// never older than what this client saw: every answer carries the Raft
// index it reflects (ferry-applied-index), and the client sends the
// highest it has seen as ferry-min-index with every read, so it reads its
// own writes, and never goes back in time, whichever node serves it
// (LastIndex, SeenIndex; Options.StaleReadsOK turns this off).
// Options.MaxStaleness and Options.LinearizableReads ask for more.
//
//	c, err := client.New(ctx, client.Options{
//		Addresses: []string{"10.0.0.1:7443", "10.0.0.2:7443"},
//		TLSDir:    "/etc/ferry/tls",
//	})
//	...
//	defer c.Close()
//	resp, err := c.Jobs().ListMigrationJobs(ctx, &ferryv1.ListMigrationJobsRequest{})
package client

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ferry-v2v/ferry/pkg/backoff"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/tlsutil"
)

// Defaults of Options.
const (
	DefaultMaxAttempts = 8
	DefaultBackoff     = 100 * time.Millisecond
	DefaultMaxBackoff  = 2 * time.Second
)

// ErrNoAddresses is returned by New when Options.Addresses is empty.
var ErrNoAddresses = errors.New("client: no coordinator addresses")

// ErrNoLeader is returned by FindLeader when the cluster has no leader.
var ErrNoLeader = errors.New("client: no leader elected yet")

// Options configure a Client.
type Options struct {
	// Addresses of coordinators (host:port); any member will do, the
	// client finds the leader from there. Required.
	Addresses []string
	// Credentials for mutual TLS. When nil, TLSDir is used.
	Credentials credentials.TransportCredentials
	// TLSDir is a PKI directory (ca.crt, client.crt, client.key) used when
	// Credentials is nil and Insecure is false.
	TLSDir string
	// Insecure dials plaintext, for a coordinator run with --insecure.
	Insecure bool
	// Timeout bounds every unary call, retries included, whose context has
	// no deadline. Zero means no bound. Streams are never bounded by it.
	Timeout time.Duration
	// LinearizableReads adds the ferry-read: linearizable header to every
	// read (Get, List, Watch, ListMembers), so a read reflects every write
	// acknowledged before it, whichever node serves it.
	LinearizableReads bool
	// MaxStaleness, when set, lets a follower serve a read only if it heard
	// from the leader within it (ferry-max-staleness); otherwise the read
	// goes to the leader.
	MaxStaleness time.Duration
	// SpreadReads sends each read (but a linearizable one) to the next
	// known address in turn, so followers share the reads; writes still
	// go to the leader. Reads stay no older than LastIndex.
	SpreadReads bool
	// StaleReadsOK stops sending ferry-min-index: reads may then be older
	// than this client's own writes when another node serves them.
	StaleReadsOK bool
	// AttemptTimeout, when set, bounds each attempt of a call that is safe
	// to repeat; an attempt that runs out moves to the next address, as
	// an unreachable node does (a paused node accepts connections but
	// never answers). Zero: attempts are bounded only by the call's
	// deadline. Keep it above the slowest call you make (a source sync).
	AttemptTimeout time.Duration
	// MaxAttempts bounds how many times one call is sent (default 8).
	MaxAttempts int
	// Backoff is the first pause between attempts (default 100ms); it
	// doubles up to MaxBackoff (default 2s). A move to a hinted leader
	// does not wait.
	Backoff    time.Duration
	MaxBackoff time.Duration
	// DialOptions are added to every connection (tests use them for custom
	// dialers; further interceptors run inside the client's own).
	DialOptions []grpc.DialOption
}

// Client is a leader-aware connection to a coordinator cluster. It is safe
// for concurrent use. It implements grpc.ClientConnInterface, so any
// generated client built on it (c.Conn()) follows the leader too.
type Client struct {
	opts  Options
	creds credentials.TransportCredentials

	mu      sync.Mutex
	addrs   []string // configured addresses, then learned ones
	current string   // where the next call goes first
	conns   map[string]*grpc.ClientConn
	closed  bool

	// seen is the highest ferry-applied-index of any answer.
	seen atomic.Uint64
	// spread counts reads sent under SpreadReads.
	spread atomic.Uint64
}

// spreads says whether a call goes to the next address in turn.
func (c *Client) spreads(method string) bool {
	return c.opts.SpreadReads && !c.opts.LinearizableReads && isRead(method)
}

// nextReadAddress is where the next spread read goes.
func (c *Client) nextReadAddress() string {
	n := c.spread.Add(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.addrs[int(n%uint64(len(c.addrs)))]
}

// LastIndex is the highest Raft index an answer to this client reflected:
// reads it sends reflect at least this index.
func (c *Client) LastIndex() uint64 { return c.seen.Load() }

// SeenIndex raises LastIndex to index (one another process saw, say), so
// later reads reflect at least it.
func (c *Client) SeenIndex(index uint64) {
	for {
		old := c.seen.Load()
		if index <= old || c.seen.CompareAndSwap(old, index) {
			return
		}
	}
}

// New makes a Client. It reads the TLS files but does not contact the
// cluster; connections open on first use. ctx is not kept.
func New(ctx context.Context, opts Options) (*Client, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var addrs []string
	for _, a := range opts.Addresses {
		for _, part := range strings.Split(a, ",") {
			if part = strings.TrimSpace(part); part != "" && !contains(addrs, part) {
				addrs = append(addrs, part)
			}
		}
	}
	if len(addrs) == 0 {
		return nil, ErrNoAddresses
	}
	creds, err := transportCredentials(opts)
	if err != nil {
		return nil, err
	}
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = DefaultMaxAttempts
	}
	if opts.Backoff <= 0 {
		opts.Backoff = DefaultBackoff
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = DefaultMaxBackoff
	}
	return &Client{opts: opts, creds: creds, addrs: addrs, current: addrs[0], conns: map[string]*grpc.ClientConn{}}, nil
}

func transportCredentials(opts Options) (credentials.TransportCredentials, error) {
	switch {
	case opts.Insecure:
		return insecure.NewCredentials(), nil
	case opts.Credentials != nil:
		return opts.Credentials, nil
	case opts.TLSDir != "":
		creds, err := tlsutil.ClientCredentialsFromDir(opts.TLSDir, tlsutil.RoleClient)
		if err != nil {
			return nil, fmt.Errorf("client: TLS from %s: %w", opts.TLSDir, err)
		}
		return creds, nil
	default:
		return nil, errors.New("client: no TLS credentials: set Credentials or TLSDir, or Insecure for a plaintext coordinator")
	}
}

// Close closes every connection. Calls in flight fail.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	var errs []error
	for addr, conn := range c.conns {
		errs = append(errs, conn.Close())
		delete(c.conns, addr)
	}
	return errors.Join(errs...)
}

// Target returns the address the next call goes to first: the leader, once
// a call has found it.
func (c *Client) Target() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.current
}

// Addresses returns every address the client knows: those it was given,
// then the leaders it learned of.
func (c *Client) Addresses() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.addrs...)
}

// Conn returns the client as a grpc.ClientConnInterface for generated
// clients of other services (health, reflection, the agent stream).
func (c *Client) Conn() grpc.ClientConnInterface { return c }

// TargetInventory returns the TargetInventoryService client: target
// clusters, hosts, primary storage, L3 networks.
func (c *Client) TargetInventory() ferryv1.TargetInventoryServiceClient {
	return ferryv1.NewTargetInventoryServiceClient(c)
}

// MigrationServers returns the MigrationServerService client.
func (c *Client) MigrationServers() ferryv1.MigrationServerServiceClient {
	return ferryv1.NewMigrationServerServiceClient(c)
}

// Sources returns the SourceService client: sources and credentials.
func (c *Client) Sources() ferryv1.SourceServiceClient {
	return ferryv1.NewSourceServiceClient(c)
}

// Jobs returns the MigrationJobService client.
func (c *Client) Jobs() ferryv1.MigrationJobServiceClient {
	return ferryv1.NewMigrationJobServiceClient(c)
}

// Settings returns the SettingsService client.
func (c *Client) Settings() ferryv1.SettingsServiceClient {
	return ferryv1.NewSettingsServiceClient(c)
}

// Certificates returns the CertificateService client: the revocation list.
func (c *Client) Certificates() ferryv1.CertificateServiceClient {
	return ferryv1.NewCertificateServiceClient(c)
}

// Membership returns the MembershipService client: the coordinators' Raft
// membership.
func (c *Client) Membership() ferryv1.MembershipServiceClient {
	return ferryv1.NewMembershipServiceClient(c)
}

// NetworkMappings is the NetworkMappingService.
func (c *Client) NetworkMappings() ferryv1.NetworkMappingServiceClient {
	return ferryv1.NewNetworkMappingServiceClient(c)
}

// Invoke sends a unary call to the current target; the interceptor on its
// connection takes over from there.
func (c *Client) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	addr := c.Target()
	if c.spreads(method) {
		addr = c.nextReadAddress()
	}
	conn, err := c.conn(addr)
	if err != nil {
		return err
	}
	return conn.Invoke(ctx, method, args, reply, opts...)
}

// NewStream opens a stream on the current target; the interceptor on its
// connection takes over from there.
func (c *Client) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	conn, err := c.conn(c.Target())
	if err != nil {
		return nil, err
	}
	return conn.NewStream(ctx, desc, method, opts...)
}

// FindLeader asks the cluster for its leader with MembershipService.ListMembers,
// makes it the target of later calls, and returns its API address. It
// retries while no leader is elected, within the client's attempt bound.
func (c *Client) FindLeader(ctx context.Context) (string, error) {
	wait := c.opts.Backoff
	for attempt := 1; ; attempt++ {
		resp, err := c.Membership().ListMembers(ctx, &ferryv1.ListMembersRequest{})
		if err != nil {
			return "", err
		}
		if addr := resp.GetLeaderAddress(); addr != "" {
			c.setTarget(addr)
			return addr, nil
		}
		if attempt >= c.opts.MaxAttempts {
			return "", ErrNoLeader
		}
		if err := sleep(ctx, wait); err != nil {
			return "", err
		}
		wait = min(2*wait, c.opts.MaxBackoff)
	}
}

// conn returns the connection to addr, opening it on first use.
func (c *Client) conn(addr string) (*grpc.ClientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, errors.New("client: closed")
	}
	if conn, ok := c.conns[addr]; ok {
		return conn, nil
	}
	dial := []grpc.DialOption{
		grpc.WithTransportCredentials(c.creds),
		grpc.WithChainUnaryInterceptor(c.unaryInterceptor),
		grpc.WithChainStreamInterceptor(c.streamInterceptor),
	}
	conn, err := grpc.NewClient(addr, append(dial, c.opts.DialOptions...)...)
	if err != nil {
		return nil, fmt.Errorf("client: dial %s: %w", addr, err)
	}
	c.conns[addr] = conn
	return conn, nil
}

// setTarget makes addr the first stop of later calls and remembers it.
func (c *Client) setTarget(addr string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.current = addr
	if !contains(c.addrs, addr) {
		c.addrs = append(c.addrs, addr)
	}
}

// after returns the address that follows addr in the rotation.
func (c *Client) after(addr string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, a := range c.addrs {
		if a == addr {
			return c.addrs[(i+1)%len(c.addrs)]
		}
	}
	return c.addrs[0]
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	if d > 0 && backoff.Sleep(ctx, d) {
		return nil
	}
	return ctx.Err()
}

// Audit is ferry.v1.AuditService.
func (c *Client) Audit() ferryv1.AuditServiceClient {
	return ferryv1.NewAuditServiceClient(c)
}
