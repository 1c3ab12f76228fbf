package server_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/ferry-v2v/ferry/coordinator/internal/authz"
	"github.com/ferry-v2v/ferry/coordinator/internal/testcluster"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/tlsutil"
)

// method is one method a node serves.
type method struct {
	full           string
	clientStreams  bool
	serverStreams  bool
	in, out        protoreflect.MessageDescriptor
	service, short string
}

// servedMethods reads every method a node serves from its registered
// service descriptors, so no method can be left out of a test.
func servedMethods(t *testing.T, n *testcluster.Node) []method {
	t.Helper()
	var out []method
	for svc, info := range n.Server.ServiceInfo() {
		d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(svc))
		if err != nil {
			t.Fatalf("service %s: %v", svc, err)
		}
		sd := d.(protoreflect.ServiceDescriptor)
		for _, m := range info.Methods {
			md := sd.Methods().ByName(protoreflect.Name(m.Name))
			out = append(out, method{full: "/" + svc + "/" + m.Name, clientStreams: m.IsClientStream, serverStreams: m.IsServerStream,
				in: md.Input(), out: md.Output(), service: svc, short: m.Name})
		}
	}
	slices.SortFunc(out, func(a, b method) int { return strings.Compare(a.full, b.full) })
	return out
}

// TestEveryServedMethodHasARule: a method without an authorization rule
// fails here (and is refused to everybody at run time), and a rule without
// a method is stale.
func TestEveryServedMethodHasARule(t *testing.T) {
	c := testcluster.Start(t, 1)
	served := map[string]bool{}
	for _, m := range servedMethods(t, c.Nodes()[0]) {
		served[m.full] = true
		if _, ok := authz.Rule(m.full); !ok {
			t.Errorf("%s has no authorization rule in coordinator/internal/authz/table.go", m.full)
		}
	}
	for _, m := range authz.Methods() {
		if !served[m] && !strings.HasPrefix(m, "/grpc.") && m != authz.MetricsPath {
			t.Errorf("authorization rule for %s, which no service serves", m)
		}
	}
}

// call invokes m with an empty request and returns the outcome: a status,
// or nil when the call went through (or was still streaming at the end).
func call(ctx context.Context, conn *grpc.ClientConn, m method, md metadata.MD) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if md != nil {
		ctx = metadata.NewOutgoingContext(ctx, md)
	}
	in := newMsg(m.in)
	if !m.clientStreams && !m.serverStreams {
		return conn.Invoke(ctx, m.full, in, newMsg(m.out))
	}
	cs, err := conn.NewStream(ctx, &grpc.StreamDesc{ClientStreams: m.clientStreams, ServerStreams: m.serverStreams}, m.full)
	if err != nil {
		return err
	}
	if err := cs.SendMsg(in); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	if !m.clientStreams {
		_ = cs.CloseSend()
	}
	err = cs.RecvMsg(newMsg(m.out))
	if errors.Is(err, io.EOF) || status.Code(err) == codes.DeadlineExceeded {
		return nil
	}
	return err
}

func newMsg(d protoreflect.MessageDescriptor) proto.Message {
	if t, err := protoregistry.GlobalTypes.FindMessageByName(d.FullName()); err == nil {
		return t.New().Interface()
	}
	return dynamicpb.NewMessage(d)
}

// expected says, independently of the table, what each role may call:
// operators the whole API, viewers its reads, agents their stream,
// coordinators membership; everyone but agents and coordinators reflection;
// everyone health.
func expected(role tlsutil.Role, m method) bool {
	switch {
	case m.service == "grpc.health.v1.Health":
		return true
	case strings.HasPrefix(m.service, "grpc.reflection."):
		return role == tlsutil.RoleIDOperator || role == tlsutil.RoleIDViewer
	case m.service == "ferry.agent.v1.AgentService":
		return role == tlsutil.RoleIDAgent
	}
	switch role {
	case tlsutil.RoleIDOperator:
		return true
	case tlsutil.RoleIDViewer:
		return slices.ContainsFunc([]string{"Get", "List", "Watch", "Preview"}, func(p string) bool { return strings.HasPrefix(m.short, p) })
	case tlsutil.RoleIDCoordinator:
		return m.service == "ferry.v1.MembershipService"
	}
	return false
}

// TestAuthorizationMatrix calls every method of every service with each
// kind of certificate, at the leader and at a follower: what a role may not
// call is PERMISSION_DENIED naming the role and the method, and moves no
// node's applied index; a certificate of another CA does not get through
// the handshake.
func TestAuthorizationMatrix(t *testing.T) {
	if testing.Short() {
		t.Skip("three-node cluster")
	}
	c := testcluster.Start(t, 3)
	leader := c.Leader(10 * time.Second)
	follower := c.Followers()[0]
	methods := servedMethods(t, leader)
	foreign := filepath.Join(t.TempDir(), "tls")
	if err := tlsutil.InitPKI(foreign, tlsutil.Options{}); err != nil {
		t.Fatal(err)
	}
	ids := []tlsutil.Identity{
		{Role: tlsutil.RoleIDViewer, Name: "alice"},
		{Role: tlsutil.RoleIDAgent, Name: "kvm-1"},
		tlsutil.DefaultCoordinator,
		tlsutil.DefaultOperator,
	}
	ctx := testcluster.Ctx(t, 5*time.Minute)
	// A revoked operator whose connections were open before it was revoked:
	// every call on them is refused.
	revokedID := tlsutil.Identity{Role: tlsutil.RoleIDOperator, Name: "revoked"}
	revokedConns := map[*testcluster.Node]*grpc.ClientConn{}
	for _, at := range []*testcluster.Node{leader, follower} {
		revokedConns[at] = c.DialAs(at.Addr(), revokedID)
		if _, err := ferryv1.NewMembershipServiceClient(revokedConns[at]).ListMembers(ctx, &ferryv1.ListMembersRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	revokedSerial := revoke(t, c, c.Dial(follower.Addr()), revokedID)
	for _, at := range []*testcluster.Node{leader, follower} {
		for _, id := range ids {
			conn := c.DialAs(at.Addr(), id)
			name := fmt.Sprintf("%s at %s", id, at.Name)
			// Refusals first: none of them may move the ledger.
			before := settledIndexes(t, c)
			for _, m := range methods {
				if expected(id.Role, m) {
					continue
				}
				err := call(ctx, conn, m, nil)
				want := fmt.Sprintf("role %s (%s) may not call %s", id.Role, id, m.full)
				if status.Code(err) != codes.PermissionDenied || status.Convert(err).Message() != want {
					t.Errorf("%s: %s = %v; want PERMISSION_DENIED %q", name, m.full, err, want)
				}
			}
			if after := appliedIndexes(c); !slices.Equal(before, after) {
				t.Errorf("%s: refused calls moved the applied indexes from %v to %v", name, before, after)
			}
			for _, m := range methods {
				if !expected(id.Role, m) {
					continue
				}
				if err := call(ctx, conn, m, nil); status.Code(err) == codes.PermissionDenied || status.Code(err) == codes.Unauthenticated {
					t.Errorf("%s: %s refused: %v", name, m.full, err)
				}
			}
		}
		before := settledIndexes(t, c)
		for _, m := range methods {
			err := call(ctx, revokedConns[at], m, nil)
			want := fmt.Sprintf("the certificate of %s (serial %s) is revoked", revokedID, revokedSerial)
			if status.Code(err) != codes.PermissionDenied || status.Convert(err).Message() != want {
				t.Errorf("revoked at %s: %s = %v; want PERMISSION_DENIED %q", at.Name, m.full, err, want)
			}
		}
		if after := appliedIndexes(c); !slices.Equal(before, after) {
			t.Errorf("revoked at %s: moved the applied indexes from %v to %v", at.Name, before, after)
		}
		// Another install's operator: the handshake fails.
		conn := c.DialDir(at.Addr(), filepath.Join(foreign, tlsutil.OperatorDir), tlsutil.RoleClient)
		before = settledIndexes(t, c)
		for _, m := range methods {
			if err := call(ctx, conn, m, nil); status.Code(err) != codes.Unavailable {
				t.Errorf("foreign CA at %s: %s = %v; want UNAVAILABLE (handshake refused)", at.Name, m.full, err)
			}
		}
		if after := appliedIndexes(c); !slices.Equal(before, after) {
			t.Errorf("foreign CA at %s: moved the applied indexes from %v to %v", at.Name, before, after)
		}
	}
}

// TestForwardingKeepsTheCallersRole: a viewer's write is refused at a
// follower before it is forwarded; what a client claims in the forwarded
// caller headers is ignored (only a coordinator's claim counts); an
// operator's write through a follower is authorized at the leader as the
// operator.
func TestForwardingKeepsTheCallersRole(t *testing.T) {
	if testing.Short() {
		t.Skip("three-node cluster")
	}
	c := testcluster.Start(t, 3)
	leader := c.Leader(10 * time.Second)
	follower := c.Followers()[0]
	ctx := testcluster.Ctx(t, time.Minute)
	viewer := tlsutil.Identity{Role: tlsutil.RoleIDViewer, Name: "eve"}
	claim := func(id tlsutil.Identity) context.Context {
		return metadata.AppendToOutgoingContext(ctx, authz.CallerHeader, id.String(), authz.CallerSerialHeader, "1")
	}
	create := func(ctx context.Context, conn *grpc.ClientConn, id string) error {
		_, err := ferryv1.NewTargetInventoryServiceClient(conn).CreateCluster(ctx, &ferryv1.CreateClusterRequest{Cluster: &ferryv1.Cluster{Name: "clusters/" + id}})
		return err
	}
	for _, at := range []*testcluster.Node{leader, follower} {
		conn := c.DialAs(at.Addr(), viewer)
		err := create(claim(tlsutil.DefaultOperator), conn, "by-viewer")
		if want := "role viewer (ferry://viewer/eve) may not call /ferry.v1.TargetInventoryService/CreateCluster"; status.Code(err) != codes.PermissionDenied || status.Convert(err).Message() != want {
			t.Errorf("viewer claiming to be an operator at %s: %v; want PERMISSION_DENIED %q", at.Name, err, want)
		}
	}
	// A coordinator's claim is trusted: it is how forwarding works.
	coord := c.DialAs(leader.Addr(), tlsutil.DefaultCoordinator)
	if err := create(claim(viewer), coord, "as-viewer"); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "role viewer") {
		t.Errorf("a coordinator calling for a viewer: %v; want PERMISSION_DENIED for the viewer", err)
	}
	if err := create(ctx, coord, "as-coordinator"); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "role coordinator") {
		t.Errorf("a coordinator calling for itself: %v; want PERMISSION_DENIED for the coordinator", err)
	}
	if err := create(ctx, c.Dial(follower.Addr()), "by-operator"); err != nil {
		t.Fatalf("operator's write through a follower: %v", err)
	}
	// A viewer's leader-only read is forwarded and answered as the viewer's.
	_, err := ferryv1.NewMigrationJobServiceClient(c.DialAs(follower.Addr(), viewer)).PreviewMigrationJobs(ctx, &ferryv1.PreviewMigrationJobsRequest{})
	if status.Code(err) == codes.PermissionDenied {
		t.Errorf("viewer's preview through a follower: %v", err)
	}
}

// settledIndexes waits until every node has applied the same index and
// it holds still for a moment (what allowed calls before wrote, and the
// sessions they opened, have landed everywhere), and returns it.
func settledIndexes(t *testing.T, c *testcluster.Cluster) []uint64 {
	t.Helper()
	var out []uint64
	testcluster.Eventually(t, 20*time.Second, "the nodes' applied indexes to settle", func() bool {
		a := appliedIndexes(c)
		time.Sleep(300 * time.Millisecond)
		b := appliedIndexes(c)
		out = b
		return slices.Equal(a, b) && !slices.ContainsFunc(b, func(i uint64) bool { return i != b[0] })
	})
	return out
}

func appliedIndexes(c *testcluster.Cluster) []uint64 {
	var out []uint64
	for _, n := range c.Nodes() {
		out = append(out, n.Server.Node().Stats().AppliedIndex)
	}
	return out
}

// revoke revokes id's certificate through conn (an operator's), waits until
// every node has the entry and returns the serial.
func revoke(t *testing.T, c *testcluster.Cluster, conn *grpc.ClientConn, id tlsutil.Identity) string {
	t.Helper()
	cert, err := tlsutil.ReadCertificate(filepath.Join(c.Issue(id), tlsutil.PairName(id.Role)+".crt"))
	if err != nil {
		t.Fatal(err)
	}
	serial := tlsutil.SerialString(cert)
	// As people copy it: upper case with colons.
	var colons []string
	for i := 0; i < len(serial); i += 2 {
		colons = append(colons, strings.ToUpper(serial[i:min(i+2, len(serial))]))
	}
	resp, err := ferryv1.NewCertificateServiceClient(conn).RevokeCertificate(testcluster.Ctx(t, 10*time.Second),
		&ferryv1.RevokeCertificateRequest{Serial: strings.Join(colons, ":"), Reason: "test: " + id.Name})
	if err != nil {
		t.Fatalf("revoke %s: %v", id, err)
	}
	if got := resp.GetRevokedCertificate(); got.GetSerial() != serial || got.GetName() != "revokedCertificates/"+serial ||
		got.GetRevokedBy() != tlsutil.DefaultOperator.String() || got.GetRevokeTime() == nil {
		t.Fatalf("revoke %s (serial %s) = %v", id, serial, got)
	}
	for _, n := range c.Nodes() {
		testcluster.Eventually(t, 5*time.Second, n.Name+" knows the revocation", func() bool { return n.Server.Ledger().Revoked(serial) })
	}
	return serial
}

// TestRevocation: revoking an agent's certificate ends its open session
// within five seconds; a revoked certificate cannot open a new connection
// to any node; the list shows what was revoked, by whom, and survives a
// snapshot restore on a node killed and restarted.
func TestRevocation(t *testing.T) {
	if testing.Short() {
		t.Skip("three-node cluster")
	}
	c := testcluster.Start(t, 3)
	leader := c.Leader(10 * time.Second)
	ctx := testcluster.Ctx(t, time.Minute)
	agentID := tlsutil.Identity{Role: tlsutil.RoleIDAgent, Name: "kvm-9"}
	stream, err := agentv1.NewAgentServiceClient(c.DialAgent(leader.Addr(), "kvm-9")).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Hello{Hello: &agentv1.Hello{HostName: "kvm-9"}}}); err != nil {
		t.Fatal(err)
	}
	if msg, err := stream.Recv(); err != nil || msg.GetWelcome() == nil {
		t.Fatalf("hello: %v, %v", msg, err)
	}
	ended := make(chan error, 1)
	go func() {
		for {
			// Heartbeats keep the session up until it is cut.
			if _, err := stream.Recv(); err != nil {
				ended <- err
				return
			}
			_ = stream.Send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Heartbeat{Heartbeat: &agentv1.Heartbeat{}}})
		}
	}()
	revoked := time.Now()
	serial := revoke(t, c, c.Dial(c.Followers()[0].Addr()), agentID)
	select {
	case err := <-ended:
		want := "certificate " + serial + " was revoked"
		if status.Code(err) != codes.PermissionDenied || status.Convert(err).Message() != want {
			t.Fatalf("session ended with %v; want PERMISSION_DENIED %q", err, want)
		}
		t.Logf("the revoked agent's session ended %v after RevokeCertificate was called", time.Since(revoked).Round(time.Millisecond))
	case <-time.After(5*time.Second - time.Since(revoked)):
		t.Fatal("the revoked agent's session is still open 5s after its revocation")
	}
	testcluster.Eventually(t, 5*time.Second, "hosts/kvm-9 disconnected", func() bool {
		h, ok := leader.Server.Ledger().Host("hosts/kvm-9")
		return ok && !h.GetConnected()
	})
	for _, n := range c.Nodes() {
		_, err := ferryv1.NewMembershipServiceClient(c.DialAs(n.Addr(), agentID)).ListMembers(ctx, &ferryv1.ListMembersRequest{})
		if status.Code(err) != codes.Unavailable {
			t.Errorf("a new connection of the revoked certificate to %s: %v; want UNAVAILABLE (handshake refused)", n.Name, err)
		}
	}
	viewer := c.DialAs(leader.Addr(), tlsutil.Identity{Role: tlsutil.RoleIDViewer, Name: "auditor"})
	list, err := ferryv1.NewCertificateServiceClient(viewer).ListRevokedCertificates(ctx, &ferryv1.ListRevokedCertificatesRequest{})
	if err != nil || len(list.GetRevokedCertificates()) != 1 || list.GetRevokedCertificates()[0].GetReason() != "test: kvm-9" {
		t.Fatalf("list = %v, %v", list, err)
	}
	// A node restarted from a snapshot still refuses the certificate.
	f := c.Followers()[0]
	if err := f.Server.Node().Snapshot(); err != nil {
		t.Fatal(err)
	}
	c.Kill(f)
	c.Restart(f)
	testcluster.Eventually(t, 10*time.Second, "the restarted node knows the revocation", func() bool { return f.Server.Ledger().Revoked(serial) })
}
