package session

import (
	"context"
	"crypto/ed25519"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
)

// signingCoordinator welcomes every session; the first session's signature
// requests go unanswered and end the session (the leader lost the lead),
// the later sessions' are signed with key.
type signingCoordinator struct {
	agentv1.UnimplementedAgentServiceServer
	key      ed25519.PrivateKey
	sessions atomic.Int32

	mu       sync.Mutex
	requests []*agentv1.SignBundle // with the session each came on
	on       []int32
}

func (sc *signingCoordinator) Connect(stream agentv1.AgentService_ConnectServer) error {
	n := sc.sessions.Add(1)
	if _, err := stream.Recv(); err != nil {
		return err
	}
	w := &agentv1.Welcome{CoordinatorId: "c", HeartbeatIntervalMs: 50, GracePeriodMs: 60000}
	if err := stream.Send(&agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_Welcome{Welcome: w}}); err != nil {
		return err
	}
	for {
		msg, err := stream.Recv()
		if err != nil {
			return err
		}
		req := msg.GetSignBundle()
		if req == nil {
			continue
		}
		sc.mu.Lock()
		sc.requests, sc.on = append(sc.requests, req), append(sc.on, n)
		sc.mu.Unlock()
		if n == 1 {
			return status.Error(codes.Unavailable, "test: lost the lead")
		}
		pub := sc.key.Public().(ed25519.PublicKey)
		ans := &agentv1.BundleSignature{RequestId: req.GetRequestId(), Signature: ed25519.Sign(sc.key, req.GetManifest()), PublicKey: pub, KeyId: "k"}
		if err := stream.Send(&agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_BundleSignature{BundleSignature: ans}}); err != nil {
			return err
		}
	}
}

// TestSignatureAcrossReconnect: a signature request asked on a session
// that ends unanswered waits, and is asked again on the next session,
// whose answer it returns.
func TestSignatureAcrossReconnect(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(nil)
	sc := &signingCoordinator{key: key}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	agentv1.RegisterAgentServiceServer(srv, sc)
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(lis) }()
	t.Cleanup(func() { srv.Stop(); <-served })

	outbox := NewOutbox()
	signer := NewSigner(outbox, nil)
	signer.retry = 200 * time.Millisecond
	c := New(Config{Coordinators: []string{lis.Addr().String()}, HostName: "h1", Credentials: insecure.NewCredentials(),
		BackoffMin: 20 * time.Millisecond, BackoffMax: 100 * time.Millisecond},
		Deps{Runner: &fakeRunner{outbox: outbox}, Facts: staticFacts{}, Outbox: outbox, Signer: signer, Logger: slog.New(slog.DiscardHandler)})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	waitUntil(t, "a session", func() bool { return c.Coordinator() != "" })
	manifest := []byte(`{"format": "ferry-bundle/1", "job": "migrationJobs/e1"}`)
	sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer scancel()
	sig, pub, err := signer.SignBundle(sctx, "migrationJobs/e1", 7, manifest)
	if err != nil {
		t.Fatal(err)
	}
	if !ed25519.Verify(ed25519.PublicKey(pub), manifest, sig) {
		t.Fatal("the answered signature is not of the manifest")
	}
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if len(sc.requests) < 2 || sc.on[0] != 1 || sc.on[len(sc.on)-1] < 2 {
		t.Fatalf("requests on sessions %v, want the first unanswered and a later one signed", sc.on)
	}
	for i, r := range sc.requests {
		if r.GetJob() != "migrationJobs/e1" || r.GetEpoch() != 7 || string(r.GetManifest()) != string(manifest) {
			t.Errorf("request %d = %v", i, r)
		}
	}
	if sc.requests[0].GetRequestId() == sc.requests[len(sc.requests)-1].GetRequestId() {
		t.Error("the request was asked again under the same id")
	}
}

// TestSignerWaitsAndRefuses: without a session nothing is asked and the
// request waits; the leader's refusal is ErrSignRefused with its reason;
// a cancelled context ends the wait.
func TestSignerWaitsAndRefuses(t *testing.T) {
	o := NewOutbox()
	s := NewSigner(o, nil)
	s.retry = 50 * time.Millisecond
	type result struct {
		sig []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		sig, _, err := s.SignBundle(context.Background(), "migrationJobs/e1", 2, []byte("m"))
		done <- result{sig, err}
	}()
	time.Sleep(150 * time.Millisecond)
	if msgs := o.take(); len(msgs) != 0 {
		t.Fatalf("asked %v without a session", msgs)
	}
	select {
	case r := <-done:
		t.Fatalf("SignBundle returned %v without an answer", r.err)
	default:
	}
	s.setConnected(true)
	req := signRequest(t, o)
	s.answer(&agentv1.BundleSignature{RequestId: req.GetRequestId(), Error: "job is MIGRATION_JOB_STATE_CANCELLED"})
	r := <-done
	if !errors.Is(r.err, ErrSignRefused) || r.err.Error() != "bundle signature refused: job is MIGRATION_JOB_STATE_CANCELLED" {
		t.Fatalf("SignBundle = %v, want ErrSignRefused with the reason", r.err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		sig, _, err := s.SignBundle(ctx, "migrationJobs/e1", 2, []byte("m"))
		done <- result{sig, err}
	}()
	signRequest(t, o)
	cancel()
	if r := <-done; !errors.Is(r.err, context.Canceled) {
		t.Fatalf("SignBundle after cancel = %v", r.err)
	}
}

// signRequest waits for the next SignBundle the outbox holds.
func signRequest(t *testing.T, o *Outbox) *agentv1.SignBundle {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, m := range o.take() {
			if r := m.GetSignBundle(); r != nil {
				return r
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("no signature request queued")
	return nil
}
