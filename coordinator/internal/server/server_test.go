package server_test

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferry-v2v/ferry/coordinator/internal/config"
	"github.com/ferry-v2v/ferry/coordinator/internal/server"
	"github.com/ferry-v2v/ferry/coordinator/internal/testcluster"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/tlsutil"
)

func createCluster(t *testing.T, conn *grpc.ClientConn, id string) error {
	t.Helper()
	ctx := testcluster.Ctx(t, 10*time.Second)
	_, err := ferryv1.NewTargetInventoryServiceClient(conn).CreateCluster(ctx, &ferryv1.CreateClusterRequest{
		Cluster: &ferryv1.Cluster{Name: "clusters/" + id, DisplayName: id}, RequestId: "req-" + id,
	})
	return err
}

func clusterNames(t *testing.T, n *testcluster.Node) map[string]bool {
	out := map[string]bool{}
	for _, c := range n.Server.Ledger().Clusters() {
		out[c.GetName()] = true
	}
	return out
}

// TestThreeNodeCluster walks the life of a cluster: writes through a
// follower, the leader killed, a new one elected, nothing acknowledged
// lost, the dead node back, and a fourth node joining via a snapshot.
func TestThreeNodeCluster(t *testing.T) {
	c := testcluster.New(t)
	c.TrailingLogs = 4
	for i := 0; i < 3; i++ {
		c.AddNode()
	}
	c.WaitMembers(3, 10*time.Second)
	leader := c.Leader(5 * time.Second)
	follower := c.Followers()[0]

	// A write through a follower lands on every node.
	if err := createCluster(t, c.Dial(follower.Addr()), "via-follower"); err != nil {
		t.Fatalf("write through follower: %v", err)
	}
	for _, n := range c.Nodes() {
		testcluster.Eventually(t, 5*time.Second, n.Name+" has the write", func() bool { return clusterNames(t, n)["clusters/via-follower"] })
	}

	// Concurrent writes through every node; remember what was acknowledged.
	var mu sync.Mutex
	acked := []string{"clusters/via-follower"}
	var wg sync.WaitGroup
	for i := 0; i < 60; i++ {
		wg.Add(1)
		n := c.Nodes()[i%3]
		go func(i int, conn *grpc.ClientConn) {
			defer wg.Done()
			id := fmt.Sprintf("w%d", i)
			if err := createCluster(t, conn, id); err == nil {
				mu.Lock()
				acked = append(acked, "clusters/"+id)
				mu.Unlock()
			}
		}(i, c.Dial(n.Addr()))
	}
	wg.Wait()
	if len(acked) != 61 {
		t.Fatalf("only %d of 61 writes acknowledged on a healthy cluster", len(acked))
	}

	// Kill the leader: a new one serves within 5 s.
	killed := time.Now()
	c.Kill(leader)
	newLeader := c.Leader(5 * time.Second)
	t.Logf("new leader %s after %v", newLeader.Name, time.Since(killed))
	if err := createCluster(t, c.Dial(newLeader.Addr()), "after-kill"); err != nil {
		t.Fatalf("write to the new leader: %v", err)
	}
	acked = append(acked, "clusters/after-kill")
	for _, n := range c.Nodes() {
		if !n.Alive() {
			continue
		}
		testcluster.Eventually(t, 5*time.Second, n.Name+" has every acknowledged write", func() bool {
			have := clusterNames(t, n)
			for _, a := range acked {
				if !have[a] {
					return false
				}
			}
			return true
		})
	}

	// The killed node restarts from its data dir and catches up.
	c.Restart(leader)
	testcluster.Eventually(t, 10*time.Second, "the restarted node catches up", func() bool {
		return clusterNames(t, leader)["clusters/after-kill"] && len(clusterNames(t, leader)) == len(acked)
	})

	// A fourth node joins after the leader compacted its log into a
	// snapshot, so it must catch up through InstallSnapshot.
	l := c.Leader(5 * time.Second)
	if err := l.Server.Node().Snapshot(); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	fourth := c.AddNode()
	c.WaitMembers(4, 15*time.Second)
	testcluster.Eventually(t, 10*time.Second, "the fourth node has the ledger", func() bool {
		return len(clusterNames(t, fourth)) == len(acked)
	})
	if fourth.Server.Restores() == 0 {
		t.Error("the fourth node caught up without restoring a snapshot")
	}
}

// TestEmbeddedDefault starts one node with nothing but a data dir: it
// makes its own seal key (0600) and PKI, bootstraps and serves at once.
func TestEmbeddedDefault(t *testing.T) {
	dir := t.TempDir()
	srv, err := server.New(config.Config{DataDir: dir, Listen: "127.0.0.1:0", RaftListen: "127.0.0.1:0"}, testcluster.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx := testcluster.Ctx(t, 30*time.Second)
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() { srv.Stop(); <-done })

	info, err := os.Stat(filepath.Join(dir, "seal.key"))
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("seal key: %v %v", info, err)
	}
	creds, err := tlsutil.ClientCredentialsFromDir(filepath.Join(dir, "tls"), tlsutil.RoleClient)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(srv.Addr(), grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	resp, err := ferryv1.NewMembershipServiceClient(conn).ListMembers(ctx, &ferryv1.ListMembersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetMembers()) != 1 || resp.GetLeaderAddress() != srv.Addr() {
		t.Fatalf("members = %v", resp)
	}
	if err := createCluster(t, conn, "c1"); err != nil {
		t.Fatalf("the embedded default does not take writes at once: %v", err)
	}
}

// TestMutualTLSRequired: a client without a certificate is refused.
func TestMutualTLSRequired(t *testing.T) {
	c := testcluster.Start(t, 1)
	n := c.Leader(5 * time.Second)
	cfg, err := tlsutil.ClientConfigFromDir(c.TLSDir, tlsutil.RoleClient)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Certificates = nil
	conn := dialTLS(t, n.Addr(), cfg)
	ctx := testcluster.Ctx(t, 5*time.Second)
	_, err = ferryv1.NewMembershipServiceClient(conn).ListMembers(ctx, &ferryv1.ListMembersRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("call without a client certificate: %v, want UNAVAILABLE (handshake refused)", err)
	}
}
