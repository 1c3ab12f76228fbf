package tlsutil

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// startHealthServer serves grpc.health.v1 with the coordinator's mutual TLS
// on a loopback port and reports the common name of each caller's
// certificate on names.
func startHealthServer(t *testing.T, dir string) (addr string, names <-chan string) {
	t.Helper()
	creds, err := ServerCredentials(dir)
	if err != nil {
		t.Fatalf("ServerCredentials: %v", err)
	}
	ch := make(chan string, 16)
	srv := grpc.NewServer(grpc.Creds(creds), grpc.UnaryInterceptor(
		func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			cn, _ := PeerCommonName(ctx)
			ch <- cn
			return h(ctx, req)
		}))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return lis.Addr().String(), ch
}

func check(t *testing.T, addr string, creds credentials.TransportCredentials) error {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return err
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health status = %v", resp.GetStatus())
	}
	return nil
}

func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	if err := InitPKI(dir, Options{Agents: []string{"kvm-1"}}); err != nil {
		t.Fatal(err)
	}
	otherDir := t.TempDir()
	if err := InitPKI(otherDir, Options{}); err != nil {
		t.Fatal(err)
	}
	addr, names := startHealthServer(t, dir)
	_, port, _ := net.SplitHostPort(addr)

	for _, role := range []struct{ dir, role, cn string }{
		{dir, RoleClient, ClientCommonName},
		{filepath.Join(dir, AgentsDir, "kvm-1"), RoleAgent, "kvm-1"},
		{dir, RoleCoordinator, CoordinatorCommonName},
	} {
		creds, err := ClientCredentialsFromDir(role.dir, role.role)
		if err != nil {
			t.Fatal(err)
		}
		if err := check(t, addr, creds); err != nil {
			t.Fatalf("%s certificate rejected: %v", role.role, err)
		}
		if got := <-names; got != role.cn {
			t.Errorf("server saw peer %q, want %q", got, role.cn)
		}
	}

	// By name: localhost is in the coordinator's SANs.
	creds, err := ClientCredentials(filepath.Join(dir, CACertFile), filepath.Join(dir, OperatorDir, ClientCertFile), filepath.Join(dir, OperatorDir, ClientKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := check(t, net.JoinHostPort("localhost", port), creds); err != nil {
		t.Fatalf("dial by localhost: %v", err)
	}
	<-names

	// A client that trusts the CA but presents no certificate.
	noCert, err := ClientConfigFromDir(dir, RoleClient)
	if err != nil {
		t.Fatal(err)
	}
	noCert.Certificates = nil
	if err := check(t, addr, credentials.NewTLS(noCert)); err == nil {
		t.Fatal("client without a certificate was accepted")
	}

	// A client whose certificate comes from another install's CA.
	foreign, err := ClientConfig(filepath.Join(dir, CACertFile), filepath.Join(otherDir, OperatorDir, ClientCertFile), filepath.Join(otherDir, OperatorDir, ClientKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := check(t, addr, credentials.NewTLS(foreign)); err == nil {
		t.Fatal("client with a foreign certificate was accepted")
	}

	// A client that does not trust the server's CA.
	distrust, err := ClientCredentialsFromDir(otherDir, RoleClient)
	if err != nil {
		t.Fatal(err)
	}
	if err := check(t, addr, distrust); err == nil {
		t.Fatal("client accepted a server signed by another CA")
	}
	select {
	case cn := <-names:
		t.Fatalf("a rejected client reached the handler as %q", cn)
	default:
	}
}

func TestPeerCommonNameWithoutPeer(t *testing.T) {
	if cn, ok := PeerCommonName(context.Background()); ok {
		t.Fatalf("PeerCommonName = %q, true without a peer", cn)
	}
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := ServerConfig(dir); err == nil {
		t.Fatal("ServerConfig of an empty directory succeeded")
	}
	if err := InitPKI(dir, Options{}); err != nil {
		t.Fatal(err)
	}
	// A certificate file is not a CA bundle when it holds no certificate.
	if _, err := ClientConfig(filepath.Join(dir, CAKeyFile), filepath.Join(dir, OperatorDir, ClientCertFile), filepath.Join(dir, OperatorDir, ClientKeyFile)); !errors.Is(err, ErrNoCertificates) {
		t.Fatalf("ClientConfig with a key as CA: %v, want ErrNoCertificates", err)
	}
	if _, err := ClientConfig(filepath.Join(dir, CACertFile), filepath.Join(dir, OperatorDir, ClientCertFile), filepath.Join(dir, CoordinatorDir, CoordinatorKeyFile)); err == nil {
		t.Fatal("ClientConfig with a mismatched key succeeded")
	}
}

// TestResolveDir: --tls-dir may name a PKI root or the directory of one
// certificate.
func TestResolveDir(t *testing.T) {
	root := t.TempDir()
	if err := InitPKI(root, Options{Agents: []string{"kvm-1"}}); err != nil {
		t.Fatal(err)
	}
	agentDir := filepath.Join(root, AgentsDir, "kvm-1")
	for _, tc := range []struct{ dir, role, want string }{
		{root, RoleCoordinator, filepath.Join(root, CoordinatorDir)},
		{root, RoleClient, filepath.Join(root, OperatorDir)},
		{filepath.Join(root, OperatorDir), RoleClient, filepath.Join(root, OperatorDir)},
		{agentDir, RoleAgent, agentDir},
		{root, RoleAgent, root}, // an agent's directory must be named
	} {
		if got := ResolveDir(tc.dir, tc.role); got != tc.want {
			t.Errorf("ResolveDir(%s, %s) = %s, want %s", tc.dir, tc.role, got, tc.want)
		}
	}
}
