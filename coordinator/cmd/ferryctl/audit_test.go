package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/coordinator/internal/testcluster"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/tlsutil"
)

// TestFerryctlAuditAndServerCapacity: an operator's changes are listed by
// 'audit list', filtered by resource (a refused call with its code), as
// JSON too, and readable by a viewer; 'server get' shows the cache's total
// and free space less the running jobs' reservation, and the host's CPUs
// and memory.
func TestFerryctlAuditAndServerCapacity(t *testing.T) {
	c := testcluster.Start(t, 1)
	leader := c.Leader(10 * time.Second)
	addr := leader.Addr()
	operator := &cli{t: t, server: addr, tlsDir: c.TLSDir}
	viewer := &cli{t: t, server: addr, tlsDir: c.Issue(tlsutil.Identity{Role: tlsutil.RoleIDViewer, Name: "auditor"})}

	// A host as its agent's hello would record it, with facts.
	ctx := testcluster.Ctx(t, 30*time.Second)
	if _, err := leader.Server.Node().Propose(ctx, &ledgerv1.Command{Op: &ledgerv1.Command_PutHost{PutHost: &ledgerv1.PutHost{Host: &ferryv1.Host{
		Name: "hosts/kvm-1", Connected: true, Facts: &ferryv1.HostFacts{Cpus: 16, RunningVcpus: 6, MemoryBytes: 64 << 30, MemoryAvailableBytes: 40 << 30,
			Interfaces: []*ferryv1.NetworkInterface{{Name: "eth1", Addresses: []string{"10.20.0.5/24"}}, {Name: "eth0", Addresses: []string{"192.168.1.5/24"}}},
			Storages:   []*ferryv1.StorageSpace{{Path: "/var/lib/ferry/cache", TotalBytes: 500 << 30, FreeBytes: 200 << 30}}}}}}}); err != nil {
		t.Fatal(err)
	}
	operator.ok("server", "create", "kvm-1", "--host", "kvm-1", "--type", "kvm", "--cache-path", "/var/lib/ferry/cache",
		"--migration-cidr", "10.20.0.0/24", "--upstream", "1Gbps")
	if r := operator.run("server", "create", "kvm-2", "--host", "nope", "--type", "kvm", "--cache-path", "/c"); r.code == 0 {
		t.Fatalf("creating a server on an unknown host succeeded: %q", r.out)
	}
	operator.ok("server", "disable", "kvm-1")

	out := viewer.ok("audit", "list", "--resource", "migrationServers/kvm-1")
	for _, want := range []string{"MigrationServerService/CreateMigrationServer", "MigrationServerService/DisableMigrationServer",
		"ferry://operator/ferryctl", "migration_server.cache_path", "OK"} {
		if !strings.Contains(out, want) {
			t.Errorf("audit list --resource migrationServers/kvm-1 lacks %q:\n%s", want, out)
		}
	}
	if lines := strings.Count(strings.TrimSpace(out), "\n"); lines != 2 {
		t.Errorf("audit list --resource migrationServers/kvm-1 has %d events, want 2:\n%s", lines, out)
	}
	js := operator.ok("audit", "list", "--resource", "migrationServers/kvm-2", "-o", "json")
	var raw struct {
		AuditEvents []struct {
			Method, Identity, Result string
		} `json:"audit_events"`
	}
	if err := json.Unmarshal([]byte(js), &raw); err != nil || len(raw.AuditEvents) != 1 || raw.AuditEvents[0].Result != "NOT_FOUND" {
		t.Errorf("audit list -o json of the refused create: %v %+v\n%s", err, raw, js)
	}
	if r := operator.run("audit", "list", "--since", "yesterday"); r.code != 2 || !strings.Contains(r.err, "--since") {
		t.Errorf("--since yesterday: exit %d, %q; want a usage error naming --since", r.code, r.err)
	}

	get := viewer.ok("server", "get", "kvm-1")
	for _, want := range []string{"500 GiB total, 200 GiB free (0 B reserved by running jobs)", "16 total, 10 free", "64 GiB total, 40 GiB free",
		"eth1 10.20.0.5/24", "1Gbps"} {
		if !strings.Contains(get, want) {
			t.Errorf("server get lacks %q:\n%s", want, get)
		}
	}
	if strings.Contains(get, "192.168.1.5") {
		t.Errorf("server get shows an address outside the migration CIDR:\n%s", get)
	}
}
