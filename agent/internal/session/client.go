// Package session is the agent's side of AgentService.Connect. It holds
// one session with the leader: it dials any coordinator it was given,
// follows the leader's address when a follower names it, and after losing
// the stream reconnects with backoff across all addresses, reporting the
// jobs it holds. An agent cut off from every coordinator longer than the
// grace period stops its own jobs.
package session

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"

	"github.com/ferry-v2v/ferry/pkg/backoff"
	"github.com/ferry-v2v/ferry/pkg/grpcutil"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// Defaults of Config.
const (
	DefaultBackoffMin    = 100 * time.Millisecond
	DefaultBackoffMax    = 2 * time.Second
	DefaultFactsInterval = 30 * time.Second
	DefaultHelloTimeout  = 10 * time.Second
	// maxRedirects is how many leader hints are followed in a row before
	// backing off: hints can be stale during an election.
	maxRedirects = 3
	// missedHeartbeats of silence end a session.
	missedHeartbeats = 3
)

// Runner runs the assignments (runner.Runner).
type Runner interface {
	Start(a *agentv1.Assignment) error
	Cancel(job string, epoch int64, reason string) bool
	// Cutover sets when a warm job cuts over (zero: at once).
	Cutover(job string, epoch int64, at time.Time) bool
	// SetLimits sets a migration server's bandwidth limits for its running
	// and later jobs.
	SetLimits(b *agentv1.BandwidthLimits)
	StopAll(reason string) int
	Held() []*agentv1.HeldJob
	Inventory(ctx context.Context, req *agentv1.InventoryRequest) (*ferryv1.SourceInventory, error)
}

// Facts gathers host facts (facts.Collector).
type Facts interface {
	Collect(ctx context.Context) *ferryv1.HostFacts
	// SetStoragePaths sets the paths to measure (primary storage and cache
	// paths), as the coordinator names them, and says whether they changed.
	SetStoragePaths(paths []string) bool
}

// Config configures the session.
type Config struct {
	// Coordinators are API addresses; any of them will do.
	Coordinators []string
	HostName     string
	Cluster      string
	AgentVersion string
	// Credentials secure the connection (mutual TLS, or insecure).
	Credentials credentials.TransportCredentials
	// Reconnect backoff, doubled after each failed attempt.
	BackoffMin, BackoffMax time.Duration
	// FactsInterval is how often facts are gathered and sent.
	FactsInterval time.Duration
	// HelloTimeout bounds the wait for Welcome.
	HelloTimeout time.Duration
	// DialOptions are added to every connection (tests add interceptors).
	DialOptions []grpc.DialOption
}

// Deps are the session's collaborators. Outbox must be the runner's Reporter.
type Deps struct {
	Runner Runner
	Facts  Facts
	Outbox *Outbox
	// Fences, when set, gets the leader's answers to fence checks.
	Fences *Fences
	// Signer, when set, gets the leader's answers to bundle signature
	// requests.
	Signer *Signer
	// Targets, when set, gets the answers to this host's target requests;
	// Worker, when set, carries out the work for jobs placed on this host.
	Targets *Targets
	Worker  TargetWorker
	Logger  *slog.Logger
	// OnSession, when set, is told when a session opens (true) and ends
	// (false): the agent's metrics.
	OnSession func(open bool)
}

// Client keeps the agent's session.
type Client struct {
	cfg       Config
	runner    Runner
	facts     Facts
	outbox    *Outbox
	fences    *Fences
	signer    *Signer
	targets   *Targets
	onSession func(open bool)
	worker    TargetWorker
	log       *slog.Logger

	conns map[string]*grpc.ClientConn // used by the connect loop only

	latest      atomic.Pointer[ferryv1.HostFacts]
	factsSerial atomic.Int64
	refresh     chan struct{} // gathers facts now, e.g. for new storage paths

	mu          sync.Mutex
	coordinator string        // address of the current session, "" when cut off
	lastContact time.Time     // last message from a coordinator in a session
	grace       time.Duration // from the last Welcome
	retention   time.Duration // cache retention, from the last Welcome
	stopped     bool          // jobs stopped since the last contact
}

// CacheRetention is how long caches of jobs the agent no longer holds are
// kept, as the last Welcome said; 0 before the first.
func (c *Client) CacheRetention() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.retention
}

// New returns a client; Run connects it.
func New(cfg Config, deps Deps) *Client {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.BackoffMin, DefaultBackoffMin)
	def(&cfg.BackoffMax, DefaultBackoffMax)
	def(&cfg.FactsInterval, DefaultFactsInterval)
	def(&cfg.HelloTimeout, DefaultHelloTimeout)
	log := deps.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Client{cfg: cfg, runner: deps.Runner, facts: deps.Facts, outbox: deps.Outbox, fences: deps.Fences, signer: deps.Signer, targets: deps.Targets, worker: deps.Worker, onSession: deps.OnSession,
		log: log.With("component", "agent-session", "host", cfg.HostName), conns: map[string]*grpc.ClientConn{},
		refresh: make(chan struct{}, 1)}
}

// Coordinator returns the address of the coordinator the agent holds a
// session with, or "" when it has none.
func (c *Client) Coordinator() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.coordinator
}

// Run keeps a session until ctx ends.
func (c *Client) Run(ctx context.Context) error {
	if len(c.cfg.Coordinators) == 0 {
		return errors.New("session: no coordinator addresses")
	}
	defer c.closeConns()
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { c.gatherFacts(ctx); return nil })
	g.Go(func() error { c.watchdog(ctx); return nil })
	g.Go(func() error { c.connectLoop(ctx); return nil })
	return g.Wait()
}

// connectLoop holds sessions one after the other.
func (c *Client) connectLoop(ctx context.Context) {
	wait, next, redirects := c.cfg.BackoffMin, 0, 0
	hint := ""
	for ctx.Err() == nil {
		addr := hint
		if addr == "" {
			addr = c.cfg.Coordinators[next%len(c.cfg.Coordinators)]
			next++
		}
		hint = ""
		welcomed, err := c.session(ctx, addr)
		if ctx.Err() != nil {
			return
		}
		if welcomed {
			wait, redirects = c.cfg.BackoffMin, 0
		}
		if leader, ok := grpcutil.LeaderFromError(err); ok && leader != addr && redirects < maxRedirects {
			c.log.Info("following the leader", "from", addr, "leader", leader)
			hint = leader
			redirects++
			continue
		}
		redirects = 0
		c.log.Info("session ended; reconnecting", "coordinator", addr, "err", err, "backoff", wait)
		if !backoff.Sleep(ctx, wait/2+rand.N(wait/2+1)) {
			return
		}
		wait = min(2*wait, c.cfg.BackoffMax)
	}
}

func (c *Client) conn(addr string) (*grpc.ClientConn, error) {
	if cc, ok := c.conns[addr]; ok {
		return cc, nil
	}
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(c.cfg.Credentials)}, c.cfg.DialOptions...)
	cc, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	c.conns[addr] = cc
	return cc, nil
}

func (c *Client) closeConns() {
	for _, cc := range c.conns {
		_ = cc.Close()
	}
}

// gatherFacts refreshes the facts every FactsInterval.
func (c *Client) gatherFacts(ctx context.Context) {
	t := time.NewTicker(c.cfg.FactsInterval)
	defer t.Stop()
	for {
		c.latest.Store(c.facts.Collect(ctx))
		c.factsSerial.Add(1)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-c.refresh:
		}
	}
}

// storagePaths hands the coordinator's primary storage paths to the facts
// collector, and has the facts gathered again when they changed, so the
// next heartbeat carries their space.
func (c *Client) storagePaths(paths []string) {
	if !c.facts.SetStoragePaths(paths) {
		return
	}
	select {
	case c.refresh <- struct{}{}:
	default:
	}
}

// currentFacts returns the latest facts, gathering them if none yet.
func (c *Client) currentFacts(ctx context.Context) *ferryv1.HostFacts {
	if f := c.latest.Load(); f != nil {
		return f
	}
	return c.facts.Collect(ctx)
}

// held is every job the agent holds: running ones and those whose result
// is still to be sent.
func (c *Client) held() []*agentv1.HeldJob {
	out := c.runner.Held()
	seen := map[string]bool{}
	for _, h := range out {
		seen[h.GetJob()] = true
	}
	for _, h := range c.outbox.held() {
		if !seen[h.GetJob()] {
			seen[h.GetJob()] = true
			out = append(out, h)
		}
	}
	return out
}

// watchdog stops the agent's jobs once it has been cut off from every
// coordinator for longer than the grace period of its last Welcome.
func (c *Client) watchdog(ctx context.Context) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.mu.Lock()
		cutOff := c.coordinator == "" && !c.stopped && !c.lastContact.IsZero() && time.Since(c.lastContact) > c.grace
		grace := c.grace
		c.stopped = c.stopped || cutOff
		c.mu.Unlock()
		if !cutOff {
			continue
		}
		if n := c.runner.StopAll(fmt.Sprintf("agent cut off from the coordinators longer than the grace period of %s", grace)); n > 0 {
			c.log.Warn("cut off longer than the grace period; stopped jobs", "jobs", n, "grace", grace)
		}
	}
}

func (c *Client) contact(addr string, w *agentv1.Welcome) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lastContact = time.Now()
	c.stopped = false
	if w != nil {
		c.fences.setConnected(true)
		c.signer.setConnected(true)
		c.coordinator = addr
		c.grace = time.Duration(w.GetGracePeriodMs()) * time.Millisecond
		c.retention = time.Duration(w.GetCacheRetentionMs()) * time.Millisecond
	}
}

// GracePeriod is the coordinators' agent grace period as last announced
// (0 before the first Welcome).
func (c *Client) GracePeriod() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.grace
}

// setGrace adopts a grace period a coordinator's heartbeat announced (0:
// an older coordinator that does not say; the Welcome's stays).
func (c *Client) setGrace(d time.Duration) {
	if d <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.grace != d {
		c.log.Info("grace period changed", "grace", d, "was", c.grace)
		c.grace = d
	}
}

func (c *Client) cutOff() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fences.setConnected(false)
	c.signer.setConnected(false)
	c.coordinator = ""
}

func cloneFacts(f *ferryv1.HostFacts) *ferryv1.HostFacts {
	return proto.Clone(f).(*ferryv1.HostFacts)
}
