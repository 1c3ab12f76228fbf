package grpcutil

import (
	"context"
	"testing"

	"google.golang.org/grpc/metadata"
)

func TestLinearizableRead(t *testing.T) {
	out := WithLinearizableRead(context.Background())
	md, _ := metadata.FromOutgoingContext(out)
	if got := md.Get("ferry-read"); len(got) != 1 || got[0] != "linearizable" {
		t.Fatalf("outgoing metadata = %v", md)
	}
	tests := []struct {
		name string
		ctx  context.Context
		want bool
	}{
		{"no metadata", context.Background(), false},
		{"linearizable", metadata.NewIncomingContext(context.Background(), md), true},
		{"other value", metadata.NewIncomingContext(context.Background(), metadata.Pairs(LinearizableHeader, "stale")), false},
		{"outgoing only", out, false},
	}
	for _, tt := range tests {
		if got := IsLinearizableRead(tt.ctx); got != tt.want {
			t.Errorf("%s: IsLinearizableRead = %v, want %v", tt.name, got, tt.want)
		}
	}
}
