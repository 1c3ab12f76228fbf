package grpcutil

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

func TestIncomingReadOptions(t *testing.T) {
	tests := []struct {
		name    string
		md      metadata.MD
		want    ReadOptions
		wantErr string
	}{
		{"none", metadata.MD{}, ReadOptions{}, ""},
		{"all", metadata.Pairs(LinearizableHeader, LinearizableValue, MinIndexHeader, "42", MaxStalenessHeader, "5s"),
			ReadOptions{Linearizable: true, MinIndex: 42, MaxStaleness: 5 * time.Second}, ""},
		{"highest index, shortest staleness", metadata.Pairs(MinIndexHeader, "7", MinIndexHeader, "9", MaxStalenessHeader, "3s", MaxStalenessHeader, "1s"),
			ReadOptions{MinIndex: 9, MaxStaleness: time.Second}, ""},
		{"bad index", metadata.Pairs(MinIndexHeader, "-1"), ReadOptions{}, `header ferry-min-index: "-1" is not a log index`},
		{"bad staleness", metadata.Pairs(MaxStalenessHeader, "soon"), ReadOptions{}, `header ferry-max-staleness: "soon" is not a positive duration`},
		{"zero staleness", metadata.Pairs(MaxStalenessHeader, "0s"), ReadOptions{}, `header ferry-max-staleness: "0s" is not a positive duration`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := IncomingReadOptions(metadata.NewIncomingContext(context.Background(), tt.md))
			if tt.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("IncomingReadOptions = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func TestOutgoingReadOptions(t *testing.T) {
	ctx := WithMaxStaleness(WithMinIndex(context.Background(), 12), 2*time.Second)
	ctx = WithMinIndex(WithMaxStaleness(ctx, 0), 0) // zero adds nothing
	md, _ := metadata.FromOutgoingContext(ctx)
	if got := md.Get(MinIndexHeader); len(got) != 1 || got[0] != "12" {
		t.Fatalf("%s = %q, want [12]", MinIndexHeader, got)
	}
	if got := md.Get(MaxStalenessHeader); len(got) != 1 || got[0] != "2s" {
		t.Fatalf("%s = %q, want [2s]", MaxStalenessHeader, got)
	}
	if idx, ok := AppliedIndex(metadata.Pairs(AppliedIndexHeader, "77")); !ok || idx != 77 {
		t.Fatalf("AppliedIndex = %d, %v", idx, ok)
	}
	if _, ok := AppliedIndex(metadata.MD{}); ok {
		t.Fatal("AppliedIndex of no header reports one")
	}
}

func TestStaleReadError(t *testing.T) {
	err := StaleReadError("10.0.0.1:7443", "behind", 250*time.Millisecond)
	if status.Code(err) != codes.Unavailable || status.Convert(err).Message() != "behind" {
		t.Fatalf("err = %v", err)
	}
	if !IsStaleRead(err) || IsNotLeader(err) {
		t.Fatalf("IsStaleRead %v, IsNotLeader %v; want true, false", IsStaleRead(err), IsNotLeader(err))
	}
	if addr, ok := LeaderFromError(err); !ok || addr != "10.0.0.1:7443" {
		t.Fatalf("LeaderFromError = %q, %v", addr, ok)
	}
	if d, ok := RetryDelay(err); !ok || d != 250*time.Millisecond {
		t.Fatalf("RetryDelay = %v, %v", d, ok)
	}
	if _, ok := LeaderFromError(StaleReadError("", "behind", time.Second)); ok {
		t.Fatal("LeaderFromError of a STALE_READ without a leader reports one")
	}
	if msg := status.Convert(NotLeaderErrorMsg("a:1", "gave up")).Message(); msg != "gave up" {
		t.Fatalf("NotLeaderErrorMsg message = %q", msg)
	}
}
