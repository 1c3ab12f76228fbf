package consensus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/coordinator/internal/fsm"
	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/tlsutil"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// member is one coordinator of a test cluster: a real FSM over a real
// ledger, a raft-boltdb store in its own directory and a TCP transport.
type member struct {
	id   string
	dir  string
	bind string
	fsm  *fsm.FSM
	node *Node
}

func (m *member) ledger() *ledger.Ledger { return m.fsm.Ledger() }

// harness starts and restarts members of one test cluster.
type harness struct {
	t    testing.TB
	log  *slog.Logger
	tune func(*Config)
}

func newHarness(t testing.TB, level slog.Level, tune func(*Config)) *harness {
	return &harness{t: t, log: testkit.LoggerAt(t, level), tune: tune}
}

// start opens a new member in a fresh directory on a free loopback port.
func (h *harness) start(id string, bootstrap bool) *member {
	h.t.Helper()
	m := &member{id: id, dir: filepath.Join(h.t.TempDir(), id), bind: "127.0.0.1:0"}
	h.open(m, bootstrap)
	m.bind = m.node.RaftAddress() // a restart reuses the port peers know
	return m
}

// restart reopens a shut-down member from its directory with a new FSM,
// as a restarted process would.
func (h *harness) restart(m *member) {
	h.t.Helper()
	h.open(m, false)
}

func (h *harness) open(m *member, bootstrap bool) {
	h.t.Helper()
	m.fsm = fsm.New(ledger.New(), h.log.With("node", m.id))
	cfg := Config{
		NodeID:     m.id,
		DataDir:    m.dir,
		RaftBind:   m.bind,
		APIAddress: "api-" + m.id + ":7443",
		Bootstrap:  bootstrap,
		NodeLookup: m.fsm.Ledger().Node,
		Logger:     h.log,
	}
	if h.tune != nil {
		h.tune(&cfg)
	}
	n, err := Open(cfg, m.fsm)
	if err != nil {
		h.t.Fatalf("open %s: %v", m.id, err)
	}
	m.node = n
	h.t.Cleanup(func() {
		if err := n.Shutdown(); err != nil {
			h.t.Errorf("shut down %s: %v", m.id, err)
		}
	})
}

// testPeerTLS makes a PKI with tlsutil.InitPKI and returns its
// coordinator pair and CA for Raft over mutual TLS.
func testPeerTLS(t testing.TB) *PeerTLS {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tls")
	if err := tlsutil.InitPKI(dir, tlsutil.Options{}); err != nil {
		t.Fatal(err)
	}
	tc, err := tlsutil.ServerConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	return &PeerTLS{Certificate: tc.Certificates[0], CA: tc.ClientCAs}
}

// waitLeader waits until one of ms leads and the others know it.
func waitLeader(t testing.TB, timeout time.Duration, ms ...*member) *member {
	t.Helper()
	var leader *member
	testkit.WaitFor(t, timeout, "a leader", func() bool {
		leader = nil
		for _, m := range ms {
			if m.node.IsLeader() {
				leader = m
			}
		}
		if leader == nil {
			return false
		}
		for _, m := range ms {
			if id, _ := m.node.Leader(); id != leader.id {
				return false
			}
		}
		return true
	})
	return leader
}

func clusterName(i int) string { return fmt.Sprintf("clusters/c-%d", i) }

// putCluster is a real ledger command; its request ID makes a retry of
// an ambiguous attempt harmless.
func putCluster(i int) *ledgerv1.Command {
	return &ledgerv1.Command{Op: &ledgerv1.Command_PutCluster{PutCluster: &ledgerv1.PutCluster{
		Cluster:   &ferryv1.Cluster{Name: clusterName(i), DisplayName: fmt.Sprintf("cluster %d", i)},
		RequestId: fmt.Sprintf("req-%d", i),
	}}}
}

// proposeAll proposes putCluster(i) for i in [from, to) concurrently on n
// and fails the test unless every one is acknowledged.
func proposeAll(t testing.TB, n *Node, from, to int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	errs := make(chan error, to-from)
	for i := from; i < to; i++ {
		go func() {
			res, err := n.Propose(ctx, putCluster(i))
			if err == nil && (len(res.Names) != 1 || res.Names[0] != clusterName(i)) {
				err = fmt.Errorf("result names %v, want [%s]", res.Names, clusterName(i))
			}
			errs <- err
		}()
	}
	var failed []error
	for range to - from {
		if err := <-errs; err != nil {
			failed = append(failed, err)
		}
	}
	if len(failed) > 0 {
		t.Fatalf("%d of %d proposals failed: %v", len(failed), to-from, errors.Join(failed...))
	}
}

// hasClusters reports whether m's ledger holds every cluster in names.
func hasClusters(m *member, names []string) bool {
	for _, name := range names {
		if _, ok := m.ledger().Cluster(name); !ok {
			return false
		}
	}
	return true
}

func names(from, to int) []string {
	out := make([]string, 0, to-from)
	for i := from; i < to; i++ {
		out = append(out, clusterName(i))
	}
	return out
}
