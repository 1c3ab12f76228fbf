package client

import (
	"context"
	"errors"
	"net"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferry-v2v/ferry/pkg/grpcutil"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

func TestFollowsLeaderHint(t *testing.T) {
	cl := startFakeCluster(t, 3)
	leader, follower := cl.nodes[0].addr, cl.nodes[1].addr
	c := newTestClient(t, Options{Addresses: []string{follower}})

	resp, err := c.TargetInventory().GetCluster(ctxT(t), &ferryv1.GetClusterRequest{Name: "clusters/a"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetDisplayName() != leader {
		t.Fatalf("served by %s, want the leader %s", resp.GetDisplayName(), leader)
	}
	if c.Target() != leader {
		t.Fatalf("Target = %s, want %s", c.Target(), leader)
	}
	// The next call goes to the leader at once.
	if _, err := c.TargetInventory().GetCluster(ctxT(t), &ferryv1.GetClusterRequest{Name: "clusters/a"}); err != nil {
		t.Fatal(err)
	}
	if got := cl.callsTo(follower); len(got) != 1 {
		t.Fatalf("follower got %v, want one call", got)
	}
	if !slices.Contains(c.Addresses(), leader) {
		t.Fatalf("Addresses = %v, want the learned leader in it", c.Addresses())
	}
}

func TestLeaderChangeMidSession(t *testing.T) {
	cl := startFakeCluster(t, 3)
	c := newTestClient(t, Options{Addresses: []string{cl.nodes[0].addr, cl.nodes[1].addr, cl.nodes[2].addr}})
	if _, err := c.TargetInventory().GetCluster(ctxT(t), &ferryv1.GetClusterRequest{Name: "clusters/a"}); err != nil {
		t.Fatal(err)
	}
	cl.setLeader(cl.nodes[2].addr)
	resp, err := c.TargetInventory().GetCluster(ctxT(t), &ferryv1.GetClusterRequest{Name: "clusters/a"})
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetDisplayName(); got != cl.nodes[2].addr {
		t.Fatalf("served by %s, want the new leader", got)
	}
}

func TestUnreachableAddressMovesOn(t *testing.T) {
	cl := startFakeCluster(t, 1)
	dead := deadAddress(t)
	c := newTestClient(t, Options{Addresses: []string{dead, cl.nodes[0].addr}})
	if _, err := c.TargetInventory().GetCluster(ctxT(t), &ferryv1.GetClusterRequest{Name: "clusters/a"}); err != nil {
		t.Fatalf("GetCluster with the first address dead: %v", err)
	}
	if c.Target() != cl.nodes[0].addr {
		t.Fatalf("Target = %s", c.Target())
	}
}

func TestNoLeaderYetWaitsAndRetries(t *testing.T) {
	cl := startFakeCluster(t, 2)
	cl.refuseWithoutLeader(3)
	c := newTestClient(t, Options{Addresses: []string{cl.nodes[1].addr}})
	if _, err := c.TargetInventory().GetCluster(ctxT(t), &ferryv1.GetClusterRequest{Name: "clusters/a"}); err != nil {
		t.Fatal(err)
	}
	if got := len(cl.callsTo(cl.nodes[1].addr)); got != 4 {
		t.Fatalf("follower got %d calls, want 3 refused and 1 redirected", got)
	}
}

func TestRetriesAreBounded(t *testing.T) {
	cl := startFakeCluster(t, 1)
	cl.refuseWithoutLeader(100)
	c := newTestClient(t, Options{Addresses: []string{cl.nodes[0].addr}, MaxAttempts: 4})
	_, err := c.TargetInventory().GetCluster(ctxT(t), &ferryv1.GetClusterRequest{Name: "clusters/a"})
	if !grpcutil.IsNotLeader(err) {
		t.Fatalf("err = %v, want NOT_LEADER", err)
	}
	if got := len(cl.callsTo(cl.nodes[0].addr)); got != 4 {
		t.Fatalf("%d attempts, want 4", got)
	}
}

func TestWhatIsRetried(t *testing.T) {
	tests := []struct {
		name      string
		call      func(context.Context, *Client) error
		wantRetry bool
	}{
		{"create with request_id", func(ctx context.Context, c *Client) error {
			_, err := c.TargetInventory().CreateCluster(ctx, &ferryv1.CreateClusterRequest{Cluster: &ferryv1.Cluster{}, RequestId: "r1"})
			return err
		}, true},
		{"create without request_id (the client makes one)", func(ctx context.Context, c *Client) error {
			_, err := c.TargetInventory().CreateCluster(ctx, &ferryv1.CreateClusterRequest{Cluster: &ferryv1.Cluster{}})
			return err
		}, true},
		{"delete", func(ctx context.Context, c *Client) error {
			_, err := c.TargetInventory().DeleteCluster(ctx, &ferryv1.DeleteClusterRequest{Name: "clusters/a"})
			return err
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cl := startFakeCluster(t, 2)
			follower := cl.nodes[1].addr
			c := newTestClient(t, Options{Addresses: []string{follower}})
			err := tt.call(ctxT(t), c)
			if tt.wantRetry && err != nil {
				t.Fatalf("err = %v, want the call retried at the leader", err)
			}
			if !tt.wantRetry {
				if !grpcutil.IsNotLeader(err) {
					t.Fatalf("err = %v, want the follower's NOT_LEADER", err)
				}
				if c.Target() != cl.nodes[0].addr {
					t.Fatalf("Target = %s, want the hinted leader remembered", c.Target())
				}
			}
		})
	}
}

// TestRequestIDMadeOnce: a create sent without a request_id carries one
// the client made, the same in the attempt at the follower and the retry
// at the leader; the caller's message is left alone.
func TestRequestIDMadeOnce(t *testing.T) {
	cl := startFakeCluster(t, 2)
	c := newTestClient(t, Options{Addresses: []string{cl.nodes[1].addr}})
	req := &ferryv1.CreateClusterRequest{Cluster: &ferryv1.Cluster{}}
	if _, err := c.TargetInventory().CreateCluster(ctxT(t), req); err != nil {
		t.Fatal(err)
	}
	cl.mu.Lock()
	ids := append([]string(nil), cl.reqIDs...)
	cl.mu.Unlock()
	if len(ids) != 2 || ids[0] == "" || ids[0] != ids[1] {
		t.Fatalf("request_ids of the attempts = %q, want the same non-empty one twice", ids)
	}
	if req.GetRequestId() != "" {
		t.Fatalf("the caller's request got request_id %q, want it untouched", req.GetRequestId())
	}
}

// TestReadsCarryLastIndex: the applied index of an answer is sent as
// ferry-min-index with later reads (not writes), unless StaleReadsOK.
func TestReadsCarryLastIndex(t *testing.T) {
	for _, staleOK := range []bool{false, true} {
		cl := startFakeCluster(t, 1)
		c := newTestClient(t, Options{Addresses: []string{cl.nodes[0].addr}, StaleReadsOK: staleOK})
		cl.index = "42"
		if _, err := c.TargetInventory().CreateCluster(ctxT(t), &ferryv1.CreateClusterRequest{Cluster: &ferryv1.Cluster{}}); err != nil {
			t.Fatal(err)
		}
		if c.LastIndex() != 42 {
			t.Fatalf("LastIndex = %d, want 42", c.LastIndex())
		}
		c.SeenIndex(40) // lower: no change
		if _, err := c.TargetInventory().GetCluster(ctxT(t), &ferryv1.GetClusterRequest{Name: "clusters/a"}); err != nil {
			t.Fatal(err)
		}
		cl.mu.Lock()
		got, create := cl.minIdx["GetCluster"], cl.minIdx["CreateCluster"]
		cl.mu.Unlock()
		want := []string{"42"}
		if staleOK {
			want = nil
		}
		if len(got) != len(want) || (len(want) == 1 && got[0] != want[0]) || len(create) != 0 {
			t.Fatalf("StaleReadsOK=%v: ferry-min-index of GetCluster %q, of CreateCluster %q; want %q and none", staleOK, got, create, want)
		}
	}
}

func TestOtherErrorsAreNotRetried(t *testing.T) {
	cl := startFakeCluster(t, 1)
	c := newTestClient(t, Options{Addresses: []string{cl.nodes[0].addr}})
	_, err := c.TargetInventory().GetCluster(ctxT(t), &ferryv1.GetClusterRequest{Name: "clusters/bad"})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("err = %v", err)
	}
	if got := len(cl.callsTo(cl.nodes[0].addr)); got != 1 {
		t.Fatalf("%d attempts, want 1", got)
	}
}

func TestLinearizableReads(t *testing.T) {
	cl := startFakeCluster(t, 1)
	c := newTestClient(t, Options{Addresses: []string{cl.nodes[0].addr}, LinearizableReads: true})
	if _, err := c.TargetInventory().GetCluster(ctxT(t), &ferryv1.GetClusterRequest{Name: "clusters/a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.TargetInventory().CreateCluster(ctxT(t), &ferryv1.CreateClusterRequest{Cluster: &ferryv1.Cluster{}}); err != nil {
		t.Fatal(err)
	}
	if !cl.sawLinearizable("GetCluster") || cl.sawLinearizable("CreateCluster") {
		t.Fatalf("linearizable header: Get %v, Create %v; want on GetCluster only", cl.sawLinearizable("GetCluster"), cl.sawLinearizable("CreateCluster"))
	}
}

func TestWatchFollowsLeader(t *testing.T) {
	cl := startFakeCluster(t, 3)
	leader := cl.nodes[0].addr
	c := newTestClient(t, Options{Addresses: []string{cl.nodes[2].addr}})
	stream, err := c.Jobs().WatchMigrationJobs(ctxT(t), &ferryv1.WatchMigrationJobsRequest{Names: []string{"migrationJobs/j1"}})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if ev.GetJob().GetName() != "migrationJobs/j1" || ev.GetJob().GetAssignedHost() != leader {
		t.Fatalf("event %v, want j1 from the leader %s", ev, leader)
	}
	if c.Target() != leader {
		t.Fatalf("Target = %s", c.Target())
	}
}

func TestFindLeader(t *testing.T) {
	cl := startFakeCluster(t, 3)
	cl.setLeader(cl.nodes[1].addr)
	c := newTestClient(t, Options{Addresses: []string{cl.nodes[2].addr}})
	addr, err := c.FindLeader(ctxT(t))
	if err != nil || addr != cl.nodes[1].addr || c.Target() != addr {
		t.Fatalf("FindLeader = %q, %v; Target %s; want %s", addr, err, c.Target(), cl.nodes[1].addr)
	}
	cl.setLeader("")
	c2 := newTestClient(t, Options{Addresses: []string{cl.nodes[2].addr}, MaxAttempts: 2})
	if _, err := c2.FindLeader(ctxT(t)); !errors.Is(err, ErrNoLeader) {
		t.Fatalf("FindLeader without a leader: %v", err)
	}
}

func TestNewErrors(t *testing.T) {
	ctx := context.Background()
	if _, err := New(ctx, Options{Insecure: true}); !errors.Is(err, ErrNoAddresses) {
		t.Fatalf("no addresses: %v", err)
	}
	if _, err := New(ctx, Options{Addresses: []string{"a:1"}}); err == nil {
		t.Fatal("no credentials: want an error")
	}
	if _, err := New(ctx, Options{Addresses: []string{"a:1"}, TLSDir: t.TempDir()}); err == nil {
		t.Fatal("empty TLS dir: want an error")
	}
	c, err := New(ctx, Options{Addresses: []string{"a:1, b:2", "a:1"}, Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Addresses(); !slices.Equal(got, []string{"a:1", "b:2"}) {
		t.Fatalf("Addresses = %v", got)
	}
}

func deadAddress(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	return addr
}

// TestSpreadReads: with SpreadReads, reads go to each address in turn
// (the fake followers refuse them, so each then lands on the leader),
// while the target for writes stays the leader.
func TestSpreadReads(t *testing.T) {
	cl := startFakeCluster(t, 3)
	var addrs []string
	for _, n := range cl.nodes {
		addrs = append(addrs, n.addr)
	}
	c := newTestClient(t, Options{Addresses: addrs, SpreadReads: true})
	for i := 0; i < 3; i++ {
		if _, err := c.TargetInventory().GetCluster(ctxT(t), &ferryv1.GetClusterRequest{Name: "clusters/a"}); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range cl.nodes {
		if got := cl.callsTo(n.addr); len(got) == 0 || got[0] != "GetCluster" {
			t.Errorf("calls to %s = %q, want a GetCluster sent there", n.addr, got)
		}
	}
	if c.Target() != cl.nodes[0].addr {
		t.Errorf("Target = %s, want the leader %s", c.Target(), cl.nodes[0].addr)
	}
}

// TestAttemptTimeoutMovesOn: a read sent to a node that never answers
// moves to the next address after AttemptTimeout, within the call's far
// longer deadline.
func TestAttemptTimeoutMovesOn(t *testing.T) {
	cl := startFakeCluster(t, 2)
	cl.hung = map[string]bool{cl.nodes[1].addr: true}
	c := newTestClient(t, Options{Addresses: []string{cl.nodes[1].addr, cl.nodes[0].addr}, AttemptTimeout: 200 * time.Millisecond})
	start := time.Now()
	if _, err := c.TargetInventory().GetCluster(ctxT(t), &ferryv1.GetClusterRequest{Name: "clusters/a"}); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("the read took %v, want it moved on after the 200ms attempt timeout", took)
	}
	if c.Target() != cl.nodes[0].addr {
		t.Fatalf("Target = %s, want %s", c.Target(), cl.nodes[0].addr)
	}
}
