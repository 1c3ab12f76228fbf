package grpcutil

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Read consistency beyond LinearizableHeader. A caller may bound what a
// node serves from its local ledger with two request headers, and every
// answer of a coordinator says which ledger state it reflects in two
// response headers.
const (
	// MinIndexHeader asks that a read reflect at least this Raft log index
	// (a decimal number): read-your-writes, given the AppliedIndexHeader of
	// the caller's last write. A node behind it waits for its ledger to
	// catch up for a moment, then forwards the read to the leader or
	// answers UNAVAILABLE with reason STALE_READ.
	MinIndexHeader = "ferry-min-index"
	// MaxStalenessHeader bounds how long ago (a Go duration, "5s") a
	// follower may last have heard from the leader to serve a read from
	// its own ledger, as Consul's max_stale; past it the read goes to the
	// leader.
	MaxStalenessHeader = "ferry-max-staleness"
	// AppliedIndexHeader, in every answer, is the Raft log index of the
	// ledger state it reflects: for a read, the index the node had applied
	// when it read (the answer reflects at least that); for a write, the
	// index of the write's own log entry. Send it back as MinIndexHeader.
	AppliedIndexHeader = "ferry-applied-index"
	// NodeHeader, in every answer, is the id of the coordinator that
	// served it (the leader's for a forwarded call).
	NodeHeader = "ferry-node"
	// ReasonStaleRead is the ErrorInfo reason of an UNAVAILABLE answer to
	// a read the node cannot serve fresh enough; its metadata carries the
	// leader's address (LeaderMetadataKey, maybe empty), and a RetryInfo
	// detail says when to try again.
	ReasonStaleRead = "STALE_READ"
)

// ReadOptions are the read-consistency headers of an incoming call.
type ReadOptions struct {
	Linearizable bool
	MinIndex     uint64
	MaxStaleness time.Duration
}

// WithMinIndex returns a context whose outgoing calls ask for reads that
// reflect at least index. Zero adds nothing.
func WithMinIndex(ctx context.Context, index uint64) context.Context {
	if index == 0 {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, MinIndexHeader, strconv.FormatUint(index, 10))
}

// WithMaxStaleness returns a context whose outgoing reads may be served by
// a follower only if it heard from the leader within d. Zero adds nothing.
func WithMaxStaleness(ctx context.Context, d time.Duration) context.Context {
	if d <= 0 {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, MaxStalenessHeader, d.String())
}

// IncomingReadOptions parses the read-consistency headers of the call in
// ctx. A malformed value is an error naming the header.
func IncomingReadOptions(ctx context.Context) (ReadOptions, error) {
	var o ReadOptions
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok {
		return o, nil
	}
	for _, v := range md.Get(LinearizableHeader) {
		o.Linearizable = o.Linearizable || v == LinearizableValue
	}
	for _, v := range md.Get(MinIndexHeader) {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return o, fmt.Errorf("header %s: %q is not a log index (a decimal number)", MinIndexHeader, v)
		}
		o.MinIndex = max(o.MinIndex, n)
	}
	for _, v := range md.Get(MaxStalenessHeader) {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return o, fmt.Errorf("header %s: %q is not a positive duration such as 5s", MaxStalenessHeader, v)
		}
		if o.MaxStaleness == 0 || d < o.MaxStaleness {
			o.MaxStaleness = d
		}
	}
	return o, nil
}

// AppliedIndex returns the AppliedIndexHeader of an answer's header
// metadata (grpc.Header), and false when there is none.
func AppliedIndex(md metadata.MD) (uint64, bool) {
	for _, v := range md.Get(AppliedIndexHeader) {
		if n, err := strconv.ParseUint(v, 10, 64); err == nil {
			return n, true
		}
	}
	return 0, false
}

// StaleReadError is the UNAVAILABLE answer of a node that cannot serve a
// read as fresh as asked: msg says why, leaderAddr (maybe empty) is where
// to go instead, retry when to try again here.
func StaleReadError(leaderAddr, msg string, retry time.Duration) error {
	st := status.New(codes.Unavailable, msg)
	withInfo, err := st.WithDetails(
		&errdetails.ErrorInfo{Reason: ReasonStaleRead, Domain: ErrorDomain, Metadata: map[string]string{LeaderMetadataKey: leaderAddr}},
		&errdetails.RetryInfo{RetryDelay: durationpb.New(retry)})
	if err != nil {
		return st.Err()
	}
	return withInfo.Err()
}

// IsStaleRead reports whether err is a STALE_READ answer.
func IsStaleRead(err error) bool {
	_, ok := errorInfo(err, ReasonStaleRead)
	return ok
}

// RetryDelay returns the RetryInfo delay of an error, and false when it
// has none.
func RetryDelay(err error) (time.Duration, bool) {
	st, ok := status.FromError(err)
	if !ok {
		return 0, false
	}
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri.GetRetryDelay().AsDuration(), true
		}
	}
	return 0, false
}

// errorInfo returns the UNAVAILABLE error's ErrorInfo of reason, if any.
func errorInfo(err error, reason string) (*errdetails.ErrorInfo, bool) {
	if err == nil {
		return nil, false
	}
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.Unavailable {
		return nil, false
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetReason() == reason && info.GetDomain() == ErrorDomain {
			return info, true
		}
	}
	return nil, false
}
