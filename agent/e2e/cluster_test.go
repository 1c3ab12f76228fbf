package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/pkg/client"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/tlsutil"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// coordNode is one coordinator process of a cluster.
type coordNode struct {
	id, addr string
	proc     *proc
}

// startCluster runs n coordinator processes on loopback: the first
// bootstraps (making the PKI and seal key in its data directory), the
// others join through it with the same TLS directory and key. Agents are
// given every node's address; the client knows them all.
func startCluster(t testing.TB, n int, extra ...string) *ferry {
	t.Helper()
	f := &ferry{t: t, dir: t.TempDir(), agents: map[string]*proc{}, agentDi: map[string]string{}}
	first := filepath.Join(f.dir, "n1")
	f.tlsDir = filepath.Join(first, "tls")
	var addrs []string
	for i := 1; i <= n; i++ {
		node := &coordNode{id: fmt.Sprintf("n%d", i), addr: testkit.FreeAddr(t)}
		args := []string{"--node-id", node.id, "--data-dir", filepath.Join(f.dir, node.id),
			"--listen", node.addr, "--raft-listen", testkit.FreeAddr(t)}
		if i > 1 {
			args = append(args, "--join", addrs[0], "--tls-dir", f.tlsDir, "--key-file", filepath.Join(first, "seal.key"))
		}
		node.proc = start(t, "ferry-coordinator", append(append([]string{"--log-level", "info"}, args...), extra...)...)
		f.nodes = append(f.nodes, node)
		addrs = append(addrs, node.addr)
		if i == 1 {
			f.coord = node.proc
			testkit.WaitFor(t, 30*time.Second, "the first coordinator's PKI", func() bool {
				_, err := os.Stat(filepath.Join(f.tlsDir, tlsutil.OperatorDir, tlsutil.ClientCertFile)) // written last of the pair
				return err == nil
			})
		}
	}
	f.addr, f.agentCoordinators = addrs[0], strings.Join(addrs, ",")
	c, err := client.New(context.Background(), client.Options{Addresses: addrs, TLSDir: f.tlsDir, Timeout: 30 * time.Second})
	must(t, err)
	t.Cleanup(func() { c.Close() })
	f.client = c
	testkit.WaitFor(t, 60*time.Second, fmt.Sprintf("%d voters with a leader", n), func() bool {
		m, err := c.Membership().ListMembers(ctx(t, 2*time.Second), &ferryv1.ListMembersRequest{})
		voters := 0
		for _, mb := range m.GetMembers() {
			if mb.GetVoter() {
				voters++
			}
		}
		return err == nil && voters == n && m.GetLeaderId() != ""
	})
	return f
}

// leader returns the node that leads now.
func (f *ferry) leader() *coordNode {
	f.t.Helper()
	var id string
	testkit.WaitFor(f.t, 30*time.Second, "a leader", func() bool {
		m, err := f.client.Membership().ListMembers(ctx(f.t, 2*time.Second), &ferryv1.ListMembersRequest{})
		id = m.GetLeaderId()
		return err == nil && id != ""
	})
	for _, n := range f.nodes {
		if n.id == id {
			return n
		}
	}
	f.t.Fatalf("leader %s is none of the nodes", id)
	return nil
}
