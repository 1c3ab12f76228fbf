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
	// kvm-1's own session records its host in the background, so what the
	// refused hellos must not write is compared by content: the hosts.
	hostNames := func() []string {
		var names []string
		for _, h := range led.Hosts("") {
			names = append(names, h.GetName())
		}
		return names
	}
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
	if names := hostNames(); len(names) != 1 || names[0] != "hosts/kvm-1" {
		t.Errorf("hosts after the refused hellos: %q; want only hosts/kvm-1", names)
	}
	if h, ok := led.Host("hosts/kvm-1"); !ok || !h.GetConnected() {
		t.Fatalf("kvm-1 after the refused take-overs: %v", h)
	}
	// kvm-1's own agent may reconnect and replace its session.
	if err := helloOutcome(t, c.DialAgent(addr, "kvm-1"), "kvm-1"); err != nil {
		t.Fatalf("kvm-1 reconnecting: %v", err)
	}
}

// TestSecretsOnlyToTheirHost: with kvm-a running a job and a sync of a
// source, the agent of kvm-a receives the source's secret in the
// assignment and the inventory request, and the agent of kvm-b, connected
// all along, receives nothing but its welcome and heartbeats; what kvm-b
// reports about kvm-a's job and source changes nothing.
func TestSecretsOnlyToTheirHost(t *testing.T) {
	c := testcluster.Start(t, 1)
	addr := c.Leader(10 * time.Second).Addr()
	cl := apiClient(t, c)
	seed(t, cl)
	// The free space of the server's cache path, reported ahead of time.
	cachePath := t.TempDir()
	facts := &ferryv1.HostFacts{Storages: []*ferryv1.StorageSpace{{Path: cachePath, TotalBytes: 10 * gib, FreeBytes: 10 * gib}}}
	a := startRawAgent(t, c.DialAgent(addr, "kvm-a"), &agentv1.Hello{HostName: "kvm-a", Cluster: "c1", Facts: facts}) // the cluster's one host
	b := startRawAgent(t, c.DialAgent(addr, "kvm-b"), &agentv1.Hello{HostName: "kvm-b", Facts: facts})
	for _, r := range []*rawAgent{a, b} {
		if r.next().GetWelcome() == nil {
			t.Fatal("no welcome")
		}
	}
	createServerAt(t, cl, "migrationServers/a", "hosts/kvm-a", cachePath)
	job := createJob(t, cl, "migrationServers/a", "vm-s")
	as := a.next().GetAssignment()
	if as.GetJob().GetName() != job || as.GetSecrets()["credentials/pw"] != "s3cret" {
		t.Fatalf("kvm-a's assignment: job %s, %d secrets", as.GetJob().GetName(), len(as.GetSecrets()))
	}
	synced := make(chan error, 1)
	go func() {
		_, err := cl.Sources().SyncSource(testcluster.Ctx(t, 20*time.Second), &ferryv1.SyncSourceRequest{Name: "sources/kvm"})
		synced <- err
	}()
	ir := a.next().GetInventoryRequest()
	if ir.GetSecrets()["credentials/pw"] != "s3cret" {
		t.Fatalf("kvm-a's inventory request holds %d secrets", len(ir.GetSecrets()))
	}
	a.send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_InventoryResponse{InventoryResponse: &agentv1.InventoryResponse{
		RequestId: ir.GetRequestId(), Error: "test: no source here"}}})
	<-synced

	// kvm-b forges kvm-a's progress and the source's host key.
	b.send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Progress{Progress: &agentv1.JobProgress{
		Job: job, Epoch: as.GetEpoch(), Phase: ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONFIGURING}}})
	b.send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_HostKeyObserved{HostKeyObserved: &agentv1.HostKeyObserved{
		Source: "sources/kvm", HostKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"}}})
	// A session handles messages in order: once this fence check is
	// answered, both reports were handled.
	b.send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_FenceCheck{FenceCheck: &agentv1.FenceCheck{
		RequestId: "last", Job: job, Epoch: as.GetEpoch()}}})
	if ans := b.next().GetFenceAnswer(); ans.GetRequestId() != "last" || ans.GetCurrent() {
		t.Fatalf("kvm-b's fence check of kvm-a's job: %v", ans)
	}
	select {
	case msg := <-b.in:
		t.Fatalf("kvm-b, which runs nothing, received %v", msg)
	default:
	}
	if j := getJob(t, cl, job); j.GetPhase() == ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONFIGURING {
		t.Fatalf("kvm-b's progress moved kvm-a's job: %v", j)
	}
	src, err := cl.Sources().GetSource(testcluster.Ctx(t, 5*time.Second), &ferryv1.GetSourceRequest{Name: "sources/kvm"})
	if err != nil || src.GetKvm().GetObservedHostKey() != "" {
		t.Fatalf("kvm-b recorded the source's host key: %v, %v", src, err)
	}
}
