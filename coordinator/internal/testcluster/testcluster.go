// Package testcluster runs real coordinator nodes in-process on loopback
// for tests: real Raft with raft-boltdb, real gRPC with mutual TLS, nodes
// killed and restarted from their data directories.
package testcluster

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/ferry-v2v/ferry/coordinator/internal/config"
	"github.com/ferry-v2v/ferry/coordinator/internal/server"
	"github.com/ferry-v2v/ferry/pkg/seal"
	"github.com/ferry-v2v/ferry/pkg/tlsutil"
)

// Cluster is a set of coordinator nodes sharing a PKI and a seal key.
type Cluster struct {
	t       testing.TB
	dir     string
	TLSDir  string
	KeyFile string
	Log     *slog.Logger
	// TrailingLogs is passed to every node added after it is set.
	TrailingLogs uint64
	// AuthorizationOff, set before nodes are added, serves TLS without
	// authorizing calls (benchmarks compare the two).
	AuthorizationOff bool
	// Insecure is passed to every node added after it is set: plaintext
	// gRPC and plain-TCP Raft, as --insecure. Dial and DialAgent, which
	// use the PKI, cannot reach such nodes.
	Insecure bool
	// MetricsListen is passed to every node added after it is set.
	MetricsListen string
	// AuditOff, set before nodes are added, records no audit events
	// (benchmarks compare the two).
	AuditOff bool

	mu    sync.Mutex
	nodes []*Node
	conns []*grpc.ClientConn
}

// Node is one coordinator of the cluster.
type Node struct {
	Name   string
	Config config.Config
	Server *server.Server
	cancel context.CancelFunc
	done   chan error
	alive  bool
}

// Start runs n nodes: the first bootstraps, the others join through it.
// Everything stops when the test ends.
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	c := New(t)
	for i := 0; i < n; i++ {
		c.AddNode()
	}
	c.WaitMembers(n, 10*time.Second)
	return c
}

// New makes an empty cluster: a PKI and a seal key, no nodes yet.
func New(t testing.TB) *Cluster {
	t.Helper()
	dir := t.TempDir()
	c := &Cluster{t: t, dir: dir, TLSDir: filepath.Join(dir, "tls"), KeyFile: filepath.Join(dir, "seal.key"), Log: Logger(t)}
	if err := tlsutil.InitPKI(c.TLSDir, tlsutil.Options{}); err != nil {
		t.Fatal(err)
	}
	if err := seal.GenerateKeyFile(c.KeyFile); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// AddNode starts one more node; all but the first join through a live one.
func (c *Cluster) AddNode() *Node {
	c.t.Helper()
	c.mu.Lock()
	i := len(c.nodes)
	cfg := config.Config{
		NodeID: fmt.Sprintf("n%d", i+1), DataDir: filepath.Join(c.dir, fmt.Sprintf("n%d", i+1)),
		Listen: "127.0.0.1:0", RaftListen: "127.0.0.1:0", TLSDir: c.TLSDir, KeyFile: c.KeyFile,
		TrailingLogs: c.TrailingLogs, AuthorizationOff: c.AuthorizationOff, Insecure: c.Insecure, MetricsListen: c.MetricsListen,
		AuditOff: c.AuditOff,
	}
	for _, n := range c.nodes {
		if n.alive {
			cfg.Join = append(cfg.Join, n.Server.Addr())
		}
	}
	node := &Node{Name: cfg.NodeID, Config: cfg}
	c.nodes = append(c.nodes, node)
	c.mu.Unlock()
	c.run(node)
	return node
}

func (c *Cluster) run(n *Node) {
	c.t.Helper()
	srv, err := server.New(n.Config, c.Log.With("test_node", n.Name))
	if err != nil {
		c.t.Fatalf("start %s: %v", n.Name, err)
	}
	// Restarts reuse the addresses peers and agents know.
	n.Config.Listen = srv.Addr()
	n.Config.RaftListen = srv.Node().RaftAddress()
	ctx, cancel := context.WithCancel(context.Background())
	n.Server, n.cancel, n.done, n.alive = srv, cancel, make(chan error, 1), true
	go func() { n.done <- srv.Run(ctx) }()
}

// Nodes returns the nodes, dead or alive.
func (c *Cluster) Nodes() []*Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*Node(nil), c.nodes...)
}

// Alive reports whether the node is running.
func (n *Node) Alive() bool { return n.alive }

// Addr is the node's API address.
func (n *Node) Addr() string { return n.Config.Listen }

// Kill stops a node at once, as a crash would (its data dir stays).
func (c *Cluster) Kill(n *Node) {
	if !n.alive {
		return
	}
	n.Server.Stop()
	n.cancel()
	<-n.done
	n.alive = false
}

// Restart starts a killed node again from its data directory.
func (c *Cluster) Restart(n *Node) {
	c.t.Helper()
	if n.alive {
		c.t.Fatalf("restart %s: still running", n.Name)
	}
	n.Config.Join = nil
	for _, o := range c.Nodes() {
		if o.alive {
			n.Config.Join = append(n.Config.Join, o.Addr())
		}
	}
	if len(n.Config.Join) == 0 {
		n.Config.Join = []string{n.Addr()}
	}
	c.run(n)
}

// Leader waits for a live node that leads and returns it.
func (c *Cluster) Leader(timeout time.Duration) *Node {
	c.t.Helper()
	var leader *Node
	Eventually(c.t, timeout, "a leader is elected", func() bool {
		for _, n := range c.Nodes() {
			if n.alive && n.Server.Node().IsLeader() && n.Server.Node().LeaderAPIAddress() != "" {
				leader = n
				return true
			}
		}
		return false
	})
	return leader
}

// Followers returns the live nodes that are not the current leader.
func (c *Cluster) Followers() []*Node {
	var out []*Node
	for _, n := range c.Nodes() {
		if n.alive && !n.Server.Node().IsLeader() {
			out = append(out, n)
		}
	}
	return out
}

// WaitMembers waits until the leader's configuration has want voters and
// every live node knows a leader.
func (c *Cluster) WaitMembers(want int, timeout time.Duration) {
	c.t.Helper()
	Eventually(c.t, timeout, fmt.Sprintf("%d members", want), func() bool {
		l := c.leaderNow()
		if l == nil {
			return false
		}
		m, err := l.Server.Node().Members()
		if err != nil || len(m) != want {
			return false
		}
		for _, n := range c.Nodes() {
			if n.alive && n.Server.Node().LeaderAPIAddress() == "" {
				return false
			}
		}
		return true
	})
}

func (c *Cluster) leaderNow() *Node {
	for _, n := range c.Nodes() {
		if n.alive && n.Server.Node().IsLeader() {
			return n
		}
	}
	return nil
}

// Dial returns a client connection to addr with the operator certificate.
func (c *Cluster) Dial(addr string) *grpc.ClientConn {
	return c.DialAs(addr, tlsutil.DefaultOperator)
}

// DialAgent returns a client connection to addr with the agent certificate
// of host (issued on first use).
func (c *Cluster) DialAgent(addr, host string) *grpc.ClientConn {
	return c.DialAs(addr, tlsutil.Identity{Role: tlsutil.RoleIDAgent, Name: host})
}

// Issue makes (once) a certificate for id with the cluster's CA and
// returns its directory.
func (c *Cluster) Issue(id tlsutil.Identity) string {
	c.t.Helper()
	dir, _, err := tlsutil.Issue(c.TLSDir, id, tlsutil.Options{})
	if err != nil {
		c.t.Fatal(err)
	}
	return dir
}

// DialAs returns a client connection to addr with a certificate for id,
// issued with the cluster's CA on first use.
func (c *Cluster) DialAs(addr string, id tlsutil.Identity) *grpc.ClientConn {
	c.t.Helper()
	return c.DialDir(addr, c.Issue(id), tlsutil.PairName(id.Role))
}

// DialDir returns a client connection to addr with the pair named pair
// (tlsutil.RoleAgent, ...) in dir, which trusts dir's ca.crt.
func (c *Cluster) DialDir(addr, dir, pair string) *grpc.ClientConn {
	c.t.Helper()
	creds, err := tlsutil.ClientCredentialsFromDir(dir, pair)
	if err != nil {
		c.t.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		c.t.Fatal(err)
	}
	c.mu.Lock()
	c.conns = append(c.conns, conn)
	c.mu.Unlock()
	return conn
}

// Close stops every node and connection.
func (c *Cluster) Close() {
	for _, conn := range c.conns {
		_ = conn.Close()
	}
	for _, n := range c.Nodes() {
		c.Kill(n)
	}
}

// AgentCredentials returns the transport credentials of host's agent
// certificate (issued on first use): ferry://agent/HOST.
func (c *Cluster) AgentCredentials(host string) credentials.TransportCredentials {
	c.t.Helper()
	creds, err := tlsutil.ClientCredentialsFromDir(c.Issue(tlsutil.Identity{Role: tlsutil.RoleIDAgent, Name: host}), tlsutil.RoleAgent)
	if err != nil {
		c.t.Fatal(err)
	}
	return creds
}
