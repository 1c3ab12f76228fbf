package api

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	"github.com/ferry-v2v/ferry/pkg/grpcutil"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// peers is a test Dialer over bufconn: address → env, one pooled
// connection each, as the coordinator's peer dialer keeps them.
type peers struct {
	mu    sync.Mutex
	envs  map[string]*env
	conns map[string]*grpc.ClientConn
	dials map[string]int
}

func newPeers() *peers {
	return &peers{envs: map[string]*env{}, conns: map[string]*grpc.ClientConn{}, dials: map[string]int{}}
}

func (p *peers) dial(ctx context.Context, addr string) (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dials[addr]++
	if c, ok := p.conns[addr]; ok {
		return c, nil
	}
	e, ok := p.envs[addr]
	if !ok {
		return nil, fmt.Errorf("no coordinator at %s", addr)
	}
	p.conns[addr] = e.dial(ctx)
	return p.conns[addr], nil
}

func (p *peers) add(addr string, e *env) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.envs[addr] = e
}

// pair returns a leader at "leader" and a follower that forwards to it.
func pair(t *testing.T) (leader, follower *env, p *peers) {
	p = newPeers()
	leader = newEnv(t, true, withDialer(p.dial))
	leader.raft.leaderAddr.Store("leader")
	follower = newEnv(t, false, withDialer(p.dial))
	follower.raft.leaderAddr.Store("leader")
	p.add("leader", leader)
	p.add("follower", follower)
	return leader, follower, p
}

func TestForwardWriteToLeader(t *testing.T) {
	leader, follower, _ := pair(t)
	c := ctx(t)
	resp := must[*ferryv1.Cluster](t)(follower.inv.CreateCluster(c, &ferryv1.CreateClusterRequest{
		Cluster: &ferryv1.Cluster{Name: "clusters/east", Zone: "z1"}}))
	if resp.GetName() != "clusters/east" || resp.GetCreateTime() == nil {
		t.Fatalf("forwarded create answered %v", resp)
	}
	if _, ok := leader.ledger.Cluster("clusters/east"); !ok {
		t.Fatal("the write did not land on the leader")
	}
	if _, ok := follower.ledger.Cluster("clusters/east"); ok {
		t.Fatal("the follower applied the write itself")
	}
	// The leader's refusals come back unchanged.
	_, err := follower.inv.CreateCluster(c, &ferryv1.CreateClusterRequest{Cluster: &ferryv1.Cluster{Name: "clusters/east"}})
	wantCode(t, err, codes.AlreadyExists, "cluster.name: clusters/east already exists")
	_, err = follower.inv.CreateCluster(c, &ferryv1.CreateClusterRequest{Cluster: &ferryv1.Cluster{Name: "bad"}})
	wantCode(t, err, codes.InvalidArgument, "cluster.name:")
	checkBadRequest(t, err, "cluster.name:")

	// Plain reads are local; linearizable ones go to the leader, header and all.
	_, err = follower.inv.GetCluster(c, &ferryv1.GetClusterRequest{Name: "clusters/east"})
	wantCode(t, err, codes.NotFound, "name:")
	got := must[*ferryv1.Cluster](t)(follower.inv.GetCluster(grpcutil.WithLinearizableRead(c), &ferryv1.GetClusterRequest{Name: "clusters/east"}))
	if got.GetZone() != "z1" || leader.raft.linearized.Load() != 1 {
		t.Fatalf("linearizable read gave %v after %d leader reads", got, leader.raft.linearized.Load())
	}
}

func TestForwardWithoutLeader(t *testing.T) {
	_, follower, _ := pair(t)
	follower.raft.leaderAddr.Store("")
	var trailer metadata.MD
	_, err := follower.inv.CreateCluster(ctx(t), &ferryv1.CreateClusterRequest{Cluster: &ferryv1.Cluster{}}, grpc.Trailer(&trailer))
	wantCode(t, err, codes.Unavailable, "no leader elected yet")
	if !grpcutil.IsNotLeader(err) {
		t.Fatal("not a NOT_LEADER error")
	}
}

func TestForwardRetriesWhenLeaderMoved(t *testing.T) {
	leader, follower, p := pair(t)
	// The follower still believes in "old", another follower by now, which
	// answers NOT_LEADER naming the new leader: one retry reaches it.
	old := newEnv(t, false, withDialer(p.dial))
	old.raft.leaderAddr.Store("leader")
	p.add("old", old)
	follower.raft.leaderAddr.Store("old")
	must[*ferryv1.Cluster](t)(follower.inv.CreateCluster(ctx(t), &ferryv1.CreateClusterRequest{Cluster: &ferryv1.Cluster{Name: "clusters/moved"}}))
	if _, ok := leader.ledger.Cluster("clusters/moved"); !ok {
		t.Fatal("the retried write did not land on the new leader")
	}
	if p.dials["old"] != 1 || p.dials["leader"] != 1 {
		t.Fatalf("dials %v, want old once and leader once (old must not forward again)", p.dials)
	}
}

func TestForwardUnreachableLeader(t *testing.T) {
	_, follower, _ := pair(t)
	follower.raft.leaderAddr.Store("gone")
	var trailer metadata.MD
	_, err := follower.inv.DeleteCluster(ctx(t), &ferryv1.DeleteClusterRequest{Name: "clusters/x"}, grpc.Trailer(&trailer))
	wantCode(t, err, codes.Unavailable, "reach the leader at gone")
}

func TestForwardNotLeaderTrailer(t *testing.T) {
	e := newEnv(t, false)
	e.raft.leaderAddr.Store("10.0.0.1:7443")
	var trailer metadata.MD
	_, err := e.inv.CreateCluster(ctx(t), &ferryv1.CreateClusterRequest{Cluster: &ferryv1.Cluster{}}, grpc.Trailer(&trailer))
	wantCode(t, err, codes.Unavailable, "not the leader; the leader is at 10.0.0.1:7443")
	if addr, ok := grpcutil.LeaderFromTrailer(trailer); !ok || addr != "10.0.0.1:7443" {
		t.Fatalf("trailer %v", trailer)
	}
}

func TestForwardWatchCarriesLeaderProgress(t *testing.T) {
	leader, follower, _ := pair(t)
	leader.seed()
	c := ctx(t)
	job := must[*ferryv1.CreateMigrationJobsResponse](t)(follower.jobs.CreateMigrationJobs(c, jobsReq(1))).GetJobs()[0]
	stream := must[grpc.ServerStreamingClient[ferryv1.WatchMigrationJobsResponse]](t)(follower.jobs.WatchMigrationJobs(c,
		&ferryv1.WatchMigrationJobsRequest{SendInitial: true}))
	if ev := recv(t, stream); ev.GetType() != ferryv1.WatchEventType_WATCH_EVENT_TYPE_INITIAL || ev.GetJob().GetName() != job.GetName() {
		t.Fatalf("first event %v", ev)
	}
	leader.startJob(job.GetName(), 1)
	if ev := recv(t, stream); ev.GetType() != ferryv1.WatchEventType_WATCH_EVENT_TYPE_CHANGED {
		t.Fatalf("got %v, want CHANGED", ev)
	}
	leader.hub.Progress(job.GetName(), 1, []*ferryv1.DiskProgress{{SourceDisk: "vda", DoneBytes: 7, TotalBytes: 10}})
	if ev := recv(t, stream); ev.GetType() != ferryv1.WatchEventType_WATCH_EVENT_TYPE_PROGRESS || ev.GetJob().GetDisks()[0].GetDoneBytes() != 7 {
		t.Fatalf("got %v, want the leader's PROGRESS", ev)
	}
}

func TestIsWriteMethod(t *testing.T) {
	for m, want := range map[string]bool{
		"/ferry.v1.TargetInventoryService/CreateCluster":               true,
		"/ferry.v1.MigrationServerService/SetMigrationServerBandwidth": true,
		"/ferry.v1.MigrationJobService/CancelMigrationJob":             true,
		"/ferry.v1.MembershipService/AddVoter":                         true,
		"/ferry.v1.MembershipService/ListMembers":                      false,
		"/ferry.v1.MigrationJobService/WatchMigrationJobs":             false,
		"/ferry.v1.SettingsService/GetSettings":                        false,
		"/ferry.agent.v1.AgentService/Connect":                         false,
		"/grpc.health.v1.Health/Check":                                 false,
	} {
		if got := IsWriteMethod(m); got != want {
			t.Errorf("IsWriteMethod(%s) = %v", m, got)
		}
	}
}
