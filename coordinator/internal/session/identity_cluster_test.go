package session_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferry-v2v/ferry/coordinator/internal/testcluster"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/tlsutil"
)

// helloOutcome opens a session on conn, says hello as host and returns
// the first answer: nil for a welcome, else the stream's status. The
// stream stays open (until the test ends) when welcomed.
func helloOutcome(t *testing.T, conn *grpc.ClientConn, host string) error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := agentv1.NewAgentServiceClient(conn).Connect(ctx)
	if err != nil {
		return err
	}
	hello := &agentv1.Hello{HostName: host, Facts: &ferryv1.HostFacts{Cpus: 1}}
	if err := stream.Send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Hello{Hello: hello}}); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	msg, err := stream.Recv()
	if err != nil {
		return err
	}
	if msg.GetWelcome() == nil {
		t.Fatalf("first answer to hello: %v", msg)
	}
	return nil
}

// TestAHostIsOnlyItself: the agent certificate of kvm-1 cannot say hello
// as kvm-2; kvm-1's session cannot be taken over by any other certificate
// (another agent's, an operator's, a coordinator's), only by kvm-1's own
// agent reconnecting; malformed and oversized host names are refused and
// nothing of them reaches the ledger.
func TestAHostIsOnlyItself(t *testing.T) {
	c := testcluster.Start(t, 1)
	leader := c.Leader(10 * time.Second)
	addr := leader.Addr()
	led := leader.Server.Ledger()

	err := helloOutcome(t, c.DialAgent(addr, "kvm-1"), "kvm-2")
	if want := `the certificate of ferry://agent/kvm-1 may only say hello as host kvm-1, not "kvm-2"`; status.Code(err) != codes.PermissionDenied || status.Convert(err).Message() != want {
		t.Fatalf("kvm-1 saying hello as kvm-2: %v; want PERMISSION_DENIED %q", err, want)
	}
	if _, ok := led.Host("hosts/kvm-2"); ok {
		t.Fatal("a refused hello recorded hosts/kvm-2")
	}

	if err := helloOutcome(t, c.DialAgent(addr, "kvm-1"), "kvm-1"); err != nil {
		t.Fatalf("kvm-1 as itself: %v", err)
	}
	before := leader.Server.Node().Stats().AppliedIndex
	for _, tc := range []struct {
		conn *grpc.ClientConn
		code codes.Code
		msg  string
	}{
		{c.DialAgent(addr, "kvm-2"), codes.PermissionDenied, "may only say hello as host kvm-2"},
		{c.Dial(addr), codes.PermissionDenied, "role operator (ferry://operator/ferryctl) may not call /ferry.agent.v1.AgentService/Connect"},
		{c.DialAs(addr, tlsutil.DefaultCoordinator), codes.PermissionDenied, "role coordinator (ferry://coordinator/ferry-coordinator) may not call"},
		{c.DialAs(addr, tlsutil.Identity{Role: tlsutil.RoleIDViewer, Name: "v"}), codes.PermissionDenied, "role viewer"},
	} {
		err := helloOutcome(t, tc.conn, "kvm-1")
		if status.Code(err) != tc.code || !strings.Contains(status.Convert(err).Message(), tc.msg) {
			t.Errorf("taking over kvm-1: %v; want %v containing %q", err, tc.code, tc.msg)
		}
	}
	for name, want := range map[string]string{
		strings.Repeat("k", 3_900_000): "hello.host_name: invalid host name: 3900000 bytes, at most 253",
		"../../etc":                    `hello.host_name: invalid host name "../../etc": empty label`,
		"kvm-1\x1b[2J":                 `hello.host_name: invalid host name "kvm-1\x1b[2J": character '\x1b' is not a letter, digit or '-'`,
	} {
		err := helloOutcome(t, c.DialAgent(addr, "kvm-1"), name)
		if status.Code(err) != codes.InvalidArgument || status.Convert(err).Message() != want {
			t.Errorf("hello as %.30q: %v; want INVALID_ARGUMENT %q", name, err, want)
		}
	}
	if after := leader.Server.Node().Stats().AppliedIndex; after != before {
		t.Errorf("refused hellos moved the applied index from %d to %d", before, after)
	}
	if h, ok := led.Host("hosts/kvm-1"); !ok || !h.GetConnected() {
		t.Fatalf("kvm-1 after the refused take-overs: %v", h)
	}
	// kvm-1's own agent may reconnect and replace its session.
	if err := helloOutcome(t, c.DialAgent(addr, "kvm-1"), "kvm-1"); err != nil {
		t.Fatalf("kvm-1 reconnecting: %v", err)
	}
}
