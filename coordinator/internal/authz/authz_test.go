package authz

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/ferry-v2v/ferry/pkg/tlsutil"
)

type revokedSet map[string]bool

func (r revokedSet) Revoked(s string) bool { return r[s] }

// peerCtx is the context of a call from the certificate of id.
func peerCtx(t testing.TB, dir string, id tlsutil.Identity) (context.Context, *x509.Certificate) {
	t.Helper()
	sub, _, err := tlsutil.Issue(dir, id, tlsutil.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tlsutil.ReadCertificate(filepath.Join(sub, tlsutil.PairName(id.Role)+".crt"))
	if err != nil {
		t.Fatal(err)
	}
	info := credentials.TLSInfo{State: tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{cert}}}}
	return peer.NewContext(context.Background(), &peer.Peer{AuthInfo: info}), cert
}

// TestUnary covers what the cluster tests cannot reach: a forwarded
// caller trusted only from a coordinator, a revoked forwarded caller, and
// a method without a rule.
func TestUnary(t *testing.T) {
	dir := t.TempDir()
	if err := tlsutil.InitPKI(dir, tlsutil.Options{}); err != nil {
		t.Fatal(err)
	}
	viewer, _ := peerCtx(t, dir, tlsutil.Identity{Role: tlsutil.RoleIDViewer, Name: "v"})
	coord, _ := peerCtx(t, dir, tlsutil.DefaultCoordinator)
	a := New(revokedSet{"bad": true}, nil)
	var got Caller
	handler := func(ctx context.Context, _ any) (any, error) { got, _ = CallerFrom(ctx); return nil, nil }
	call := func(ctx context.Context, method string, md ...string) error {
		if len(md) > 0 {
			ctx = metadata.NewIncomingContext(ctx, metadata.Pairs(md...))
		}
		_, err := a.Unary()(ctx, nil, &grpc.UnaryServerInfo{FullMethod: method}, handler)
		return err
	}
	const create = "/ferry.v1.TargetInventoryService/CreateCluster"
	opURI := tlsutil.DefaultOperator.String()
	for _, tc := range []struct {
		name string
		ctx  context.Context
		md   []string
		code codes.Code
		msg  string
	}{
		{"viewer", viewer, nil, codes.PermissionDenied, "role viewer (ferry://viewer/v) may not call " + create},
		{"viewer claiming an operator", viewer, []string{CallerHeader, opURI, CallerSerialHeader, "1"}, codes.PermissionDenied, "role viewer"},
		{"coordinator for itself", coord, nil, codes.PermissionDenied, "role coordinator"},
		{"coordinator for an operator", coord, []string{CallerHeader, opURI, CallerSerialHeader, "1"}, codes.OK, ""},
		{"coordinator for a revoked operator", coord, []string{CallerHeader, opURI, CallerSerialHeader, "bad"}, codes.PermissionDenied, "(serial bad) is revoked"},
		{"coordinator for a malformed caller", coord, []string{CallerHeader, "ferry://root/x", CallerSerialHeader, "1"}, codes.PermissionDenied, "malformed"},
		{"no peer", context.Background(), nil, codes.PermissionDenied, "no verified client certificate"},
	} {
		err := call(tc.ctx, create, tc.md...)
		if status.Code(err) != tc.code || (tc.msg != "" && !contains(status.Convert(err).Message(), tc.msg)) {
			t.Errorf("%s: %v; want %v %q", tc.name, err, tc.code, tc.msg)
		}
	}
	if err := call(coord, create, CallerHeader, opURI, CallerSerialHeader, "1"); err != nil || got.Identity != tlsutil.DefaultOperator || got.Via == nil {
		t.Errorf("forwarded caller = %+v, %v", got, err)
	}
	op, _ := peerCtx(t, dir, tlsutil.DefaultOperator)
	if err := call(op, "/ferry.v1.NewService/Anything"); status.Code(err) != codes.PermissionDenied || !contains(err.Error(), "has no authorization rule") {
		t.Errorf("a method without a rule: %v", err)
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// BenchmarkAuthorize is what the interceptor adds to a call: finding the
// identity in the verified certificate, the revocation check and the rule.
func BenchmarkAuthorize(b *testing.B) {
	dir := b.TempDir()
	if err := tlsutil.InitPKI(dir, tlsutil.Options{}); err != nil {
		b.Fatal(err)
	}
	ctx, _ := peerCtx(b, dir, tlsutil.DefaultOperator)
	a := New(revokedSet{}, nil)
	in := a.Unary()
	info := &grpc.UnaryServerInfo{FullMethod: "/ferry.v1.MigrationJobService/CreateMigrationJobs"}
	handler := func(context.Context, any) (any, error) { return nil, nil }
	b.ReportAllocs()
	for b.Loop() {
		if _, err := in(ctx, nil, info, handler); err != nil {
			b.Fatal(err)
		}
	}
}
