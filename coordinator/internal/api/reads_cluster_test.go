package api_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/ferry-v2v/ferry/coordinator/internal/testcluster"
	"github.com/ferry-v2v/ferry/pkg/grpcutil"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// TestReadConsistencyHeaders, on three real nodes: every answer names its
// index and node; ferry-min-index is honoured at a follower, refused with
// STALE_READ when no node has it, and a malformed one is INVALID_ARGUMENT;
// ferry-max-staleness sends a read to the leader; a linearizable read at a
// follower is served by the leader.
func TestReadConsistencyHeaders(t *testing.T) {
	c := testcluster.Start(t, 3)
	leader := c.Leader(10 * time.Second)
	follower := c.Followers()[0]
	atFollower := ferryv1.NewSettingsServiceClient(c.Dial(follower.Addr()))
	atLeader := ferryv1.NewSettingsServiceClient(c.Dial(leader.Addr()))
	ctx := func(md ...string) context.Context {
		cx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		t.Cleanup(cancel)
		return metadata.AppendToOutgoingContext(cx, md...)
	}
	answer := func(md metadata.MD) (uint64, string) {
		idx, ok := grpcutil.AppliedIndex(md)
		node := md.Get(grpcutil.NodeHeader)
		if !ok || len(node) != 1 {
			t.Fatalf("answer headers %v: want %s and %s", md, grpcutil.AppliedIndexHeader, grpcutil.NodeHeader)
		}
		return idx, node[0]
	}

	var md metadata.MD
	if _, err := atFollower.UpdateSettings(ctx(), &ferryv1.UpdateSettingsRequest{Settings: &ferryv1.Settings{JobParallelism: 9}}, grpc.Header(&md)); err != nil {
		t.Fatal(err)
	}
	wrote, node := answer(md)
	if wrote == 0 || node != leader.Name {
		t.Fatalf("write through the follower answered index %d by %q, want a non-zero index by the leader %s", wrote, node, leader.Name)
	}

	md = nil
	s, err := atFollower.GetSettings(ctx(grpcutil.MinIndexHeader, strconv.FormatUint(wrote, 10)), &ferryv1.GetSettingsRequest{}, grpc.Header(&md))
	if err != nil || s.GetJobParallelism() != 9 {
		t.Fatalf("read at the follower with %s %d: %v, %v; want job_parallelism 9", grpcutil.MinIndexHeader, wrote, s, err)
	}
	if idx, _ := answer(md); idx < wrote {
		t.Fatalf("read with %s %d answered index %d", grpcutil.MinIndexHeader, wrote, idx)
	}

	_, err = atFollower.GetSettings(ctx(grpcutil.MinIndexHeader, "soon"), &ferryv1.GetSettingsRequest{})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "header ferry-min-index") {
		t.Fatalf("malformed %s: %v, want INVALID_ARGUMENT naming the header", grpcutil.MinIndexHeader, err)
	}

	ahead := strconv.FormatUint(wrote+1_000_000, 10)
	for _, at := range []struct {
		name string
		cl   ferryv1.SettingsServiceClient
	}{{"leader", atLeader}, {"follower (forwarded to the leader)", atFollower}} {
		_, err := at.cl.GetSettings(ctx(grpcutil.MinIndexHeader, ahead), &ferryv1.GetSettingsRequest{})
		delay, hasDelay := grpcutil.RetryDelay(err)
		if !grpcutil.IsStaleRead(err) || !hasDelay || delay <= 0 || !strings.Contains(err.Error(), "not yet the index "+ahead+" that ferry-min-index asks") {
			t.Errorf("read at the %s with %s %s: %v (retry %v); want UNAVAILABLE STALE_READ with a retry delay", at.name, grpcutil.MinIndexHeader, ahead, err, delay)
		}
	}

	md = nil
	if _, err := atFollower.GetSettings(ctx(grpcutil.MaxStalenessHeader, "1ns"), &ferryv1.GetSettingsRequest{}, grpc.Header(&md)); err != nil {
		t.Fatal(err)
	}
	if _, node := answer(md); node != leader.Name {
		t.Fatalf("read at the follower with %s 1ns served by %q, want the leader %s", grpcutil.MaxStalenessHeader, node, leader.Name)
	}
	md = nil
	if _, err := atFollower.GetSettings(ctx(grpcutil.MaxStalenessHeader, "1h"), &ferryv1.GetSettingsRequest{}, grpc.Header(&md)); err != nil {
		t.Fatal(err)
	}
	if _, node := answer(md); node != follower.Name {
		t.Fatalf("read at the follower with %s 1h served by %q, want the follower %s", grpcutil.MaxStalenessHeader, node, follower.Name)
	}

	md = nil
	if _, err := atFollower.GetSettings(grpcutil.WithLinearizableRead(ctx()), &ferryv1.GetSettingsRequest{}, grpc.Header(&md)); err != nil {
		t.Fatal(err)
	}
	if idx, node := answer(md); node != leader.Name || idx < wrote {
		t.Fatalf("linearizable read at the follower answered index %d by %q, want at least %d by the leader %s", idx, node, wrote, leader.Name)
	}
}
