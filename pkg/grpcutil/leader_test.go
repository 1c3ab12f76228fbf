package grpcutil

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
)

func TestNotLeaderError(t *testing.T) {
	tests := []struct {
		name    string
		addr    string
		msg     string
		wantOK  bool
		wrapped bool
	}{
		{"known leader", "10.0.0.2:7443", "not the leader; the leader is at 10.0.0.2:7443", true, false},
		{"wrapped", "[fd00::2]:7443", "not the leader; the leader is at [fd00::2]:7443", true, true},
		{"no leader", "", "no leader elected yet", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := NotLeaderError(tt.addr)
			st := status.Convert(err)
			if st.Code() != codes.Unavailable || st.Message() != tt.msg {
				t.Fatalf("status = %v %q, want UNAVAILABLE %q", st.Code(), st.Message(), tt.msg)
			}
			var info *errdetails.ErrorInfo
			for _, d := range st.Details() {
				info, _ = d.(*errdetails.ErrorInfo)
			}
			if info.GetReason() != "NOT_LEADER" || info.GetMetadata()["leader"] != tt.addr {
				t.Fatalf("details = %v", st.Details())
			}
			if tt.wrapped {
				err = fmt.Errorf("forward: %w", err)
			}
			if !IsNotLeader(err) {
				t.Fatal("IsNotLeader = false")
			}
			addr, ok := LeaderFromError(err)
			if addr != tt.addr || ok != tt.wantOK {
				t.Fatalf("LeaderFromError = %q, %v; want %q, %v", addr, ok, tt.addr, tt.wantOK)
			}
		})
	}
}

func TestLeaderFromOtherErrors(t *testing.T) {
	infoOtherReason, _ := status.New(codes.Unavailable, "x").WithDetails(&errdetails.ErrorInfo{
		Reason: "OVERLOADED", Domain: ErrorDomain, Metadata: map[string]string{"leader": "a:1"},
	})
	infoOtherCode, _ := status.New(codes.Internal, "x").WithDetails(&errdetails.ErrorInfo{
		Reason: ReasonNotLeader, Domain: ErrorDomain, Metadata: map[string]string{"leader": "a:1"},
	})
	for _, err := range []error{
		nil,
		errors.New("not the leader; the leader is at a:1"),
		status.Error(codes.Unavailable, "not the leader; the leader is at a:1"),
		infoOtherReason.Err(),
		infoOtherCode.Err(),
	} {
		if addr, ok := LeaderFromError(err); ok || addr != "" || IsNotLeader(err) {
			t.Errorf("LeaderFromError(%v) = %q, %v", err, addr, ok)
		}
	}
}

// followerHealth answers every call as a follower that knows the leader.
type followerHealth struct {
	healthpb.UnimplementedHealthServer
	leader string
}

func (f followerHealth) Check(context.Context, *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	return nil, NotLeaderError(f.leader)
}

func (f followerHealth) Watch(*healthpb.HealthCheckRequest, grpc.ServerStreamingServer[healthpb.HealthCheckResponse]) error {
	return NotLeaderError(f.leader)
}

func dialFollower(t *testing.T, leader string) healthpb.HealthClient {
	t.Helper()
	lis := bufconn.Listen(1 << 16)
	srv := grpc.NewServer(
		grpc.ChainUnaryInterceptor(LeaderTrailerUnaryInterceptor()),
		grpc.ChainStreamInterceptor(LeaderTrailerStreamInterceptor()),
	)
	healthpb.RegisterHealthServer(srv, followerHealth{leader: leader})
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(lis)
	}()
	conn, err := grpc.NewClient("passthrough:///follower",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		srv.Stop()
		<-done
	})
	return healthpb.NewHealthClient(conn)
}

func TestLeaderOverTheWire(t *testing.T) {
	const leader = "127.0.0.1:7443"
	client := dialFollower(t, leader)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	var trailer metadata.MD
	_, err := client.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Trailer(&trailer))
	if addr, ok := LeaderFromError(err); !ok || addr != leader {
		t.Fatalf("unary: LeaderFromError(%v) = %q, %v", err, addr, ok)
	}
	if addr, ok := LeaderFromTrailer(trailer); !ok || addr != leader {
		t.Fatalf("unary: trailer %v, want %s=%s", trailer, LeaderTrailer, leader)
	}

	stream, err := client.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	if addr, ok := LeaderFromError(err); !ok || addr != leader {
		t.Fatalf("stream: LeaderFromError(%v) = %q, %v", err, addr, ok)
	}
	if addr, ok := LeaderFromTrailer(stream.Trailer()); !ok || addr != leader {
		t.Fatalf("stream: trailer %v, want %s=%s", stream.Trailer(), LeaderTrailer, leader)
	}
}

func TestNoLeaderOverTheWire(t *testing.T) {
	client := dialFollower(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var trailer metadata.MD
	_, err := client.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Trailer(&trailer))
	if !IsNotLeader(err) {
		t.Fatalf("IsNotLeader(%v) = false", err)
	}
	if _, ok := LeaderFromError(err); ok {
		t.Fatal("LeaderFromError found a leader where none was elected")
	}
	if _, ok := LeaderFromTrailer(trailer); ok {
		t.Fatalf("trailer %v names a leader", trailer)
	}
}
