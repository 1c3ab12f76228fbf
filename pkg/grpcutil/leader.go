// Package grpcutil holds the gRPC conventions coordinators, agents and
// clients share: how a follower tells a caller where the leader is, and how a
// caller asks for a linearizable read.
//
// A node that must not serve a call (it is not the Raft leader) answers
// UNAVAILABLE with the leader's address twice: in the status details, as an
// errdetails.ErrorInfo with reason NOT_LEADER and metadata {"leader": ADDR},
// and in the "ferry-leader" trailer. Go clients read the details with
// LeaderFromError; other clients (grpcurl, scripts) see the trailer.
package grpcutil

import (
	"context"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

const (
	// LeaderTrailer is the trailer key carrying the leader's address on a
	// NOT_LEADER error.
	LeaderTrailer = "ferry-leader"
	// ErrorDomain is the ErrorInfo domain of Ferry's error details.
	ErrorDomain = "ferry.v1"
	// ReasonNotLeader is the ErrorInfo reason of a NOT_LEADER error.
	ReasonNotLeader = "NOT_LEADER"
	// LeaderMetadataKey is the ErrorInfo metadata key holding the leader's address.
	LeaderMetadataKey = "leader"
)

// NotLeaderError returns the UNAVAILABLE status a non-leader answers with:
// "not the leader; the leader is at ADDR", or "no leader elected yet" when
// leaderAddr is empty. The address is also in the status details. Return it
// from a handler behind LeaderTrailerUnaryInterceptor (or call
// SetLeaderTrailer) to set the trailer too.
func NotLeaderError(leaderAddr string) error {
	msg := "no leader elected yet"
	if leaderAddr != "" {
		msg = "not the leader; the leader is at " + leaderAddr
	}
	return NotLeaderErrorMsg(leaderAddr, msg)
}

// NotLeaderErrorMsg is NotLeaderError with its own message, for a node
// that gave up waiting for the leader it forwarded a call to.
func NotLeaderErrorMsg(leaderAddr, msg string) error {
	st := status.New(codes.Unavailable, msg)
	withInfo, err := st.WithDetails(&errdetails.ErrorInfo{
		Reason:   ReasonNotLeader,
		Domain:   ErrorDomain,
		Metadata: map[string]string{LeaderMetadataKey: leaderAddr},
	})
	if err != nil {
		// Only a proto that cannot be marshalled fails here; ErrorInfo always can.
		return st.Err()
	}
	return withInfo.Err()
}

// notLeaderInfo returns the NOT_LEADER ErrorInfo carried by err, if any. It
// sees through errors wrapped with %w.
func notLeaderInfo(err error) (*errdetails.ErrorInfo, bool) {
	return errorInfo(err, ReasonNotLeader)
}

// IsNotLeader reports whether err is a NOT_LEADER error, whether or not it
// names a leader.
func IsNotLeader(err error) bool {
	_, ok := notLeaderInfo(err)
	return ok
}

// LeaderFromError returns the leader address carried by a NOT_LEADER (or
// STALE_READ) error. ok is false when err is not one or when no leader was
// elected yet (then IsNotLeader is true and the caller should retry after a
// pause).
func LeaderFromError(err error) (addr string, ok bool) {
	info, ok := notLeaderInfo(err)
	if !ok {
		info, ok = errorInfo(err, ReasonStaleRead)
	}
	if !ok {
		return "", false
	}
	addr = info.GetMetadata()[LeaderMetadataKey]
	return addr, addr != ""
}

// LeaderFromTrailer returns the leader address from a call's trailer
// metadata (grpc.Trailer), and false when there is none.
func LeaderFromTrailer(md metadata.MD) (addr string, ok bool) {
	if v := md.Get(LeaderTrailer); len(v) > 0 && v[0] != "" {
		return v[0], true
	}
	return "", false
}

// SetLeaderTrailer sets the ferry-leader trailer of the call in ctx. It does
// nothing when addr is empty.
func SetLeaderTrailer(ctx context.Context, addr string) error {
	if addr == "" {
		return nil
	}
	return grpc.SetTrailer(ctx, metadata.Pairs(LeaderTrailer, addr))
}

// LeaderTrailerUnaryInterceptor copies the leader address of a NOT_LEADER
// error returned by a unary handler into the ferry-leader trailer.
func LeaderTrailerUnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		resp, err := handler(ctx, req)
		if addr, ok := LeaderFromError(err); ok {
			_ = SetLeaderTrailer(ctx, addr) // best effort: the details carry it too
		}
		return resp, err
	}
}

// LeaderTrailerStreamInterceptor copies the leader address of a NOT_LEADER
// error returned by a stream handler into the ferry-leader trailer.
func LeaderTrailerStreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		err := handler(srv, ss)
		if addr, ok := LeaderFromError(err); ok {
			ss.SetTrailer(metadata.Pairs(LeaderTrailer, addr))
		}
		return err
	}
}
