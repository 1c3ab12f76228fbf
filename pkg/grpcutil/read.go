package grpcutil

import (
	"context"

	"google.golang.org/grpc/metadata"
)

const (
	// LinearizableHeader is the request header a caller sets to ask for a
	// linearizable read: the node serves it only after confirming it is
	// the leader and its state has caught up, or forwards it to the leader.
	// Without it, reads are served from the local ledger.
	LinearizableHeader = "ferry-read"
	// LinearizableValue is the value of LinearizableHeader that asks for a
	// linearizable read.
	LinearizableValue = "linearizable"
)

// WithLinearizableRead returns a context whose outgoing calls ask for
// linearizable reads.
func WithLinearizableRead(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, LinearizableHeader, LinearizableValue)
}

// IsLinearizableRead reports whether the incoming call in ctx asks for a
// linearizable read.
func IsLinearizableRead(ctx context.Context) bool {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok {
		return false
	}
	for _, v := range md.Get(LinearizableHeader) {
		if v == LinearizableValue {
			return true
		}
	}
	return false
}
