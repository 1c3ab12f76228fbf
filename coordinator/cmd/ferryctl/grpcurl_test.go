package main

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/coordinator/internal/testcluster"
	"github.com/ferry-v2v/ferry/pkg/tlsutil"
)

// buildGrpcurl builds the grpcurl the module pins as a tool ("go tool
// grpcurl") into the test's temporary directory.
func buildGrpcurl(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin := filepath.Join(t.TempDir(), "grpcurl")
	cmd := exec.Command(goBin, "build", "-o", bin, "github.com/fullstorydev/grpcurl/cmd/grpcurl")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the pinned grpcurl (go build github.com/fullstorydev/grpcurl/cmd/grpcurl): %v\n%s", err, out)
	}
	return bin
}

// grpcurl runs grpcurl with the operator certificate against addr.
func grpcurl(t *testing.T, bin, tlsDir string, args ...string) string {
	t.Helper()
	tlsDir = filepath.Join(tlsDir, tlsutil.OperatorDir)
	full := []string{"-max-time", "20",
		"-cacert", filepath.Join(tlsDir, tlsutil.CACertFile),
		"-cert", filepath.Join(tlsDir, tlsutil.RoleClient+".crt"),
		"-key", filepath.Join(tlsDir, tlsutil.RoleClient+".key")}
	out, err := exec.Command(bin, append(full, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("grpcurl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestGrpcurl drives a running coordinator with the pinned grpcurl over
// mutual TLS: reflection lists the services, and a migration server is
// created and listed. The host it names is registered by a real agent.
func TestGrpcurl(t *testing.T) {
	if testing.Short() {
		t.Skip("builds grpcurl and runs a coordinator")
	}
	bin := buildGrpcurl(t)
	c := testcluster.Start(t, 1)
	addr := c.Leader(10 * time.Second).Addr()
	startAgent(t, c, addr, "kvm-9", nil)
	(&cli{t: t, server: addr, tlsDir: c.TLSDir}).waitHost("kvm-9")

	list := grpcurl(t, bin, c.TLSDir, addr, "list")
	for _, svc := range []string{"ferry.v1.MembershipService", "ferry.v1.TargetInventoryService", "ferry.v1.MigrationJobService",
		"ferry.v1.MigrationServerService", "ferry.v1.SettingsService", "ferry.v1.SourceService", "ferry.v1.CertificateService",
		"ferry.v1.NetworkMappingService", "grpc.health.v1.Health"} {
		if !strings.Contains(list, svc+"\n") {
			t.Errorf("grpcurl list lacks %s:\n%s", svc, list)
		}
	}
	if desc := grpcurl(t, bin, c.TLSDir, addr, "describe", "ferry.v1.MigrationServerService"); !strings.Contains(desc, "rpc SetMigrationServerBandwidth") {
		t.Errorf("grpcurl describe:\n%s", desc)
	}

	created := grpcurl(t, bin, c.TLSDir, "-d", `{"migration_server": {"host": "hosts/kvm-9", "type": "PLATFORM_KVM",
		"cache_path": "/var/lib/ferry/cache", "downstream_bandwidth": "500Mbps"}, "request_id": "grpcurl-1"}`,
		addr, "ferry.v1.MigrationServerService/CreateMigrationServer")
	// CreateMigrationServer answers the MigrationServer itself (AIP-133).
	var srv struct{ Name, Host, DownstreamBandwidth string }
	if err := json.Unmarshal([]byte(created), &srv); err != nil || srv.Host != "hosts/kvm-9" ||
		srv.DownstreamBandwidth != "500Mbps" || !strings.HasPrefix(srv.Name, "migrationServers/") {
		t.Fatalf("CreateMigrationServer answered %v:\n%s", err, created)
	}

	listed := grpcurl(t, bin, c.TLSDir, "-H", "ferry-read: linearizable", addr, "ferry.v1.MigrationServerService/ListMigrationServers")
	var servers struct {
		MigrationServers []struct{ Name, Host string } `json:"migrationServers"`
	}
	if err := json.Unmarshal([]byte(listed), &servers); err != nil || len(servers.MigrationServers) != 1 ||
		servers.MigrationServers[0].Name != srv.Name {
		t.Fatalf("ListMigrationServers answered %v:\n%s", err, listed)
	}
	if health := grpcurl(t, bin, c.TLSDir, addr, "grpc.health.v1.Health/Check"); !strings.Contains(health, "SERVING") {
		t.Errorf("health check:\n%s", health)
	}
}
