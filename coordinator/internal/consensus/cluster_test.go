package consensus

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// TestClusterFailoverAndCatchUp runs three real nodes, kills the leader
// under load, restarts it, and joins a fourth node through a snapshot,
// with Raft over mutual TLS as a TLS install runs it.
func TestClusterFailoverAndCatchUp(t *testing.T) {
	peer := testPeerTLS(t)
	h := newHarness(t, slog.LevelInfo, func(c *Config) {
		c.TLS = peer
		c.TrailingLogs = 16           // compact hard on Snapshot()
		c.SnapshotThreshold = 1 << 20 // but only when the test asks
	})
	ms := formCluster(t, h)
	leader := waitLeader(t, 5*time.Second, ms...)
	checkFollowersRefuse(t, leader, ms)

	proposeAll(t, leader.node, 0, 200)
	for _, m := range ms {
		testkit.WaitFor(t, 5*time.Second, m.id+" to apply 200 writes", func() bool { return hasClusters(m, names(0, 200)) })
	}

	survivors := without(ms, leader)
	subs := make(map[string]<-chan bool)
	for _, m := range survivors {
		ch, cancel := m.node.SubscribeLeadership()
		defer cancel()
		subs[m.id] = ch
	}
	acked := killLeaderUnderLoad(t, leader)
	killed := time.Now()
	next := waitLeader(t, 5*time.Second, survivors...)
	t.Logf("%s elected %s after the leader died; %d writes acknowledged during the kill",
		next.id, time.Since(killed).Round(time.Millisecond), len(acked))
	waitForLeadership(t, subs[next.id])

	proposeAll(t, next.node, 200, 300)
	want := append(names(0, 300), acked...)
	for _, m := range survivors {
		testkit.WaitFor(t, 5*time.Second, m.id+" to hold every acknowledged write", func() bool { return hasClusters(m, want) })
	}
	for _, m := range survivors {
		testkit.WaitFor(t, 5*time.Second, m.id+" to resolve the new leader's API address", func() bool {
			return m.node.LeaderAPIAddress() == "api-"+next.id+":7443"
		})
	}

	h.restart(leader)
	waitSameLedger(t, next, leader)
	if !hasClusters(leader, want) {
		t.Fatal("restarted node misses acknowledged writes")
	}

	joinThroughSnapshot(t, h, next, append(survivors, leader))
}

// formCluster bootstraps n1 and adds n2 and n3 as voters.
func formCluster(t *testing.T, h *harness) []*member {
	n1 := h.start("n1", true)
	ms := []*member{n1, h.start("n2", false), h.start("n3", false)}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, m := range ms[1:] {
		if err := n1.node.AddVoter(ctx, m.id, m.node.RaftAddress()); err != nil {
			t.Fatal(err)
		}
	}
	return ms
}

// checkFollowersRefuse checks that followers refuse writes, linearizable
// reads and membership changes with ErrNotLeader, and know the leader.
func checkFollowersRefuse(t *testing.T, leader *member, ms []*member) {
	ctx := context.Background()
	if err := leader.node.LinearizableRead(ctx); err != nil {
		t.Fatalf("linearizable read on the leader: %v", err)
	}
	for _, m := range without(ms, leader) {
		if _, err := m.node.Propose(ctx, putCluster(-1)); !errors.Is(err, ErrNotLeader) {
			t.Errorf("Propose on follower %s: err = %v, want ErrNotLeader", m.id, err)
		}
		if err := m.node.LinearizableRead(ctx); !errors.Is(err, ErrNotLeader) {
			t.Errorf("LinearizableRead on follower %s: err = %v, want ErrNotLeader", m.id, err)
		}
		if err := m.node.AddVoter(ctx, "n9", "127.0.0.1:1"); !errors.Is(err, ErrNotLeader) {
			t.Errorf("AddVoter on follower %s: err = %v, want ErrNotLeader", m.id, err)
		}
		if id, addr := m.node.Leader(); id != leader.id || addr != leader.node.RaftAddress() {
			t.Errorf("follower %s sees leader %s at %s", m.id, id, addr)
		}
		testkit.WaitFor(t, 5*time.Second, m.id+" to resolve the leader's API address", func() bool {
			return m.node.LeaderAPIAddress() == "api-"+leader.id+":7443"
		})
	}
}

// killLeaderUnderLoad shuts the leader down while four writers propose to
// it, and returns the names of the writes it acknowledged.
func killLeaderUnderLoad(t *testing.T, leader *member) []string {
	var (
		mu    sync.Mutex
		acked []string
		wg    sync.WaitGroup
	)
	enough := make(chan struct{})
	var once sync.Once
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 10_000 * (w + 1); ; i++ {
				if _, err := leader.node.Propose(context.Background(), putCluster(i)); err != nil {
					return // the node died: the outcome of this one is unknown
				}
				mu.Lock()
				acked = append(acked, clusterName(i))
				if len(acked) >= 40 {
					once.Do(func() { close(enough) })
				}
				mu.Unlock()
			}
		}()
	}
	select {
	case <-enough:
	case <-time.After(5 * time.Second):
		t.Fatal("writers made no progress before the kill")
	}
	if err := leader.node.Shutdown(); err != nil {
		t.Fatalf("kill leader: %v", err)
	}
	wg.Wait()
	return acked
}

// waitForLeadership waits for a true on a leadership subscription.
func waitForLeadership(t *testing.T, ch <-chan bool) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case leader, ok := <-ch:
			if !ok {
				t.Fatal("leadership subscription closed")
			}
			if leader {
				return
			}
		case <-timeout:
			t.Fatal("the new leader's subscription never reported leadership")
		}
	}
}

// joinThroughSnapshot snapshots and compacts the leader's log, then adds
// a fourth node, which can only catch up through InstallSnapshot.
func joinThroughSnapshot(t *testing.T, h *harness, leader *member, others []*member) {
	proposeAll(t, leader.node, 300, 340)
	if err := leader.node.Snapshot(); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	if st := leader.node.Stats(); st.LastSnapshotIndex == 0 || st.LastSnapshotIndex > st.LastIndex {
		t.Fatalf("stats after snapshot = %+v", st)
	}
	proposeAll(t, leader.node, 340, 350)

	n4 := h.start("n4", false)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := leader.node.AddVoter(ctx, n4.id, n4.node.RaftAddress()); err != nil {
		t.Fatal(err)
	}
	waitSameLedger(t, leader, n4)
	if n4.fsm.Restores() == 0 {
		t.Error("n4 caught up without restoring a snapshot; want InstallSnapshot")
	}
	for _, m := range others {
		waitSameLedger(t, leader, m)
	}

	members, err := leader.node.Members()
	if err != nil {
		t.Fatal(err)
	}
	leaders := 0
	for _, mb := range members {
		if mb.Suffrage != "Voter" {
			t.Errorf("member %+v is not a voter", mb)
		}
		if mb.Leader {
			leaders++
		}
	}
	if len(members) != 4 || leaders != 1 {
		t.Errorf("members = %+v, want four voters, one leading", members)
	}
}

// waitSameLedger waits until m has applied exactly the leader's ledger.
func waitSameLedger(t *testing.T, leader, m *member) {
	t.Helper()
	testkit.WaitFor(t, 10*time.Second, m.id+" to catch up with "+leader.id, func() bool {
		st := leader.node.Stats()
		return m.node.Stats().AppliedIndex >= st.AppliedIndex &&
			proto.Equal(leader.ledger().Snapshot(), m.ledger().Snapshot())
	})
}

func without(ms []*member, drop *member) []*member {
	var out []*member
	for _, m := range ms {
		if m != drop {
			out = append(out, m)
		}
	}
	return out
}
