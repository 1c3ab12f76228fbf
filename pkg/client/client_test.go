package client

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/ferry-v2v/ferry/pkg/grpcutil"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// fakeCluster is a set of loopback gRPC servers that answer like
// coordinators: the leader serves, the others answer NOT_LEADER with the
// leader's address (or without one while leader is empty).
type fakeCluster struct {
	mu     sync.Mutex
	leader string
	calls  map[string][]string // address → methods it received
	linear map[string]bool     // method → saw the linearizable header
	minIdx map[string][]string // method → ferry-min-index headers seen
	reqIDs []string            // request_ids of CreateCluster, every attempt
	// index is the ferry-applied-index the leader answers with.
	index string
	// hung are nodes that never answer, as a paused process.
	hung  map[string]bool
	nodes []*fakeNode
	// noLeaderFor makes the first n calls see no leader at all.
	noLeaderFor int
}

type fakeNode struct {
	ferryv1.UnimplementedMembershipServiceServer
	ferryv1.UnimplementedTargetInventoryServiceServer
	ferryv1.UnimplementedMigrationJobServiceServer
	cl   *fakeCluster
	addr string
	srv  *grpc.Server
}

func startFakeCluster(t *testing.T, n int) *fakeCluster {
	t.Helper()
	cl := &fakeCluster{calls: map[string][]string{}, linear: map[string]bool{}, minIdx: map[string][]string{}}
	for i := 0; i < n; i++ {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		node := &fakeNode{cl: cl, addr: lis.Addr().String(), srv: grpc.NewServer()}
		ferryv1.RegisterMembershipServiceServer(node.srv, node)
		ferryv1.RegisterTargetInventoryServiceServer(node.srv, node)
		ferryv1.RegisterMigrationJobServiceServer(node.srv, node)
		go func() { _ = node.srv.Serve(lis) }()
		t.Cleanup(node.srv.Stop)
		cl.nodes = append(cl.nodes, node)
	}
	cl.leader = cl.nodes[0].addr
	return cl
}

func (cl *fakeCluster) setLeader(addr string) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	cl.leader = addr
}

func (cl *fakeCluster) refuseWithoutLeader(n int) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	cl.noLeaderFor = n
}

func (cl *fakeCluster) sawLinearizable(method string) bool {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.linear[method]
}

func (cl *fakeCluster) callsTo(addr string) []string {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return append([]string(nil), cl.calls[addr]...)
}

// admit records a call and returns nil when this node may serve it.
func (n *fakeNode) admit(ctx context.Context, method string) error {
	cl := n.cl
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.hung[n.addr] {
		cl.mu.Unlock()
		<-ctx.Done()
		cl.mu.Lock()
		return status.FromContextError(ctx.Err()).Err()
	}
	cl.calls[n.addr] = append(cl.calls[n.addr], method)
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(grpcutil.LinearizableHeader); len(v) > 0 && v[0] == grpcutil.LinearizableValue {
		cl.linear[method] = true
	}
	cl.minIdx[method] = append(cl.minIdx[method], md.Get(grpcutil.MinIndexHeader)...)
	if cl.noLeaderFor > 0 {
		cl.noLeaderFor--
		return grpcutil.NotLeaderError("")
	}
	if cl.leader != n.addr {
		return grpcutil.NotLeaderError(cl.leader)
	}
	if cl.index != "" {
		_ = grpc.SetHeader(ctx, metadata.Pairs(grpcutil.AppliedIndexHeader, cl.index))
	}
	return nil
}

func (n *fakeNode) ListMembers(ctx context.Context, _ *ferryv1.ListMembersRequest) (*ferryv1.ListMembersResponse, error) {
	// Every node answers membership, as a real follower does from its own state.
	n.cl.mu.Lock()
	defer n.cl.mu.Unlock()
	n.cl.calls[n.addr] = append(n.cl.calls[n.addr], "ListMembers")
	return &ferryv1.ListMembersResponse{LeaderAddress: n.cl.leader, NodeId: n.addr}, nil
}

func (n *fakeNode) GetCluster(ctx context.Context, req *ferryv1.GetClusterRequest) (*ferryv1.Cluster, error) {
	if err := n.admit(ctx, "GetCluster"); err != nil {
		return nil, err
	}
	if req.GetName() == "clusters/bad" {
		return nil, status.Error(codes.InvalidArgument, "name: bad")
	}
	return &ferryv1.Cluster{Name: req.GetName(), DisplayName: n.addr}, nil
}

func (n *fakeNode) CreateCluster(ctx context.Context, req *ferryv1.CreateClusterRequest) (*ferryv1.Cluster, error) {
	n.cl.mu.Lock()
	n.cl.reqIDs = append(n.cl.reqIDs, req.GetRequestId())
	n.cl.mu.Unlock()
	if err := n.admit(ctx, "CreateCluster"); err != nil {
		return nil, err
	}
	return req.GetCluster(), nil
}

func (n *fakeNode) DeleteCluster(ctx context.Context, _ *ferryv1.DeleteClusterRequest) (*emptypb.Empty, error) {
	if err := n.admit(ctx, "DeleteCluster"); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

func (n *fakeNode) WatchMigrationJobs(req *ferryv1.WatchMigrationJobsRequest, stream ferryv1.MigrationJobService_WatchMigrationJobsServer) error {
	if err := n.admit(stream.Context(), "WatchMigrationJobs"); err != nil {
		return err
	}
	for _, name := range req.GetNames() {
		if err := stream.Send(&ferryv1.WatchMigrationJobsResponse{Job: &ferryv1.MigrationJob{Name: name, AssignedHost: n.addr}}); err != nil {
			return err
		}
	}
	return nil
}

func newTestClient(t *testing.T, opts Options) *Client {
	t.Helper()
	opts.Insecure = true
	if opts.Backoff == 0 {
		opts.Backoff = 5 * time.Millisecond
	}
	c, err := New(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}
