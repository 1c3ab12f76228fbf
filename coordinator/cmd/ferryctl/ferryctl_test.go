package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/coordinator/internal/testcluster"
)

// clusterEnv is what the steps of TestFerryctlOnACluster share.
type clusterEnv struct {
	c        *testcluster.Cluster
	leader   *testcluster.Node
	follower *testcluster.Node
	cache    string
}

// cli is ferryctl pointed at a follower, as an operator who knows one
// address would run it.
func (e *clusterEnv) cli(t *testing.T) *cli {
	return &cli{t: t, server: e.follower.Addr(), tlsDir: e.c.TLSDir, env: map[string]string{"KVM_SASL": "sasl-s3cret"}}
}

// TestFerryctlOnACluster runs ferryctl's root command in-process against
// three real coordinators (Raft on raft-boltdb, mutual TLS, loopback) and
// the real agent with a test-only copier. Every command goes to a
// follower; ferryctl follows the leader where it must. The steps share the
// cluster and run in order.
func TestFerryctlOnACluster(t *testing.T) {
	if testing.Short() {
		t.Skip("three-node cluster")
	}
	c := testcluster.Start(t, 3)
	e := &clusterEnv{c: c, leader: c.Leader(10 * time.Second), cache: t.TempDir()}
	e.follower = c.Followers()[0]
	startAgent(t, c, e.follower.Addr(), "kvm-1", slowCopier(8, 200*time.Millisecond))
	e.cli(t).waitHost("kvm-1")

	t.Run("create inventory, source and server through a follower", e.create)
	t.Run("list them as JSON, YAML and tables", e.list)
	t.Run("bandwidth, disable and enable", e.serverVerbs)
	t.Run("host maintenance on and off", e.hostMaintenance)
	t.Run("settings update by field mask", e.settings)
	t.Run("updates change only the flags given", e.updates)
	t.Run("errors name the field and exit non-zero", e.errors)
	t.Run("jobs from a plan file, watched line by line", e.planJobs)
	t.Run("jobs exported as a plan and created on another Ferry", e.exportPlan)
	t.Run("a job from flags, watched as JSON, cancelled and restarted", e.flagJob)
	t.Run("an unreachable first address is skipped", e.deadAddress)
	t.Run("with the leader killed, a create lands on the new leader", e.leaderKilled)
}

func (e *clusterEnv) create(t *testing.T) {
	x := e.cli(t)
	if got := path(x.json("cluster", "create", "prod", "--display-name", "Production", "--zone", "dc1"), "name"); got != "clusters/prod" {
		t.Fatalf("cluster name = %v", got)
	}
	x.ok("storage", "create", "local-1", "--cluster", "prod", "--type", "local", "--path", "/var/lib/ferry/images")
	x.ok("network", "create", "lan", "--cluster", "clusters/prod", "--bridge", "br0",
		"--ip-range", "10.0.0.100-10.0.0.199", "--gateway", "10.0.0.1", "--prefix-length", "24")

	r := x.runIn(strings.NewReader("s3cret\n"), "credential", "create", "kvm-pass", "--password-stdin", "-o", "json")
	if r.code != 0 || strings.Contains(r.out+r.err, "s3cret") {
		t.Fatalf("credential create: exit %d, output %q %q (the secret must never be echoed)", r.code, r.out, r.err)
	}
	if out := x.ok("credential", "create", "sasl", "--secret-env", "KVM_SASL"); strings.Contains(out, "sasl-s3cret") {
		t.Fatalf("credential create echoed the secret: %s", out)
	}
	x.ok("source", "create", "kvm-src", "--type", "kvm", "--address", "192.0.2.20", "--credential", "kvm-pass",
		"--sasl-user", "virt", "--sasl-credential", "sasl")
	vc := x.json("source", "create", "vc", "--type", "vcenter", "--address", "vc.example.net", "--user", "administrator@vsphere.local",
		"--credential", "kvm-pass", "--thumbprint", strings.Repeat("0a", 32), "--skip-hostname-check")
	if path(vc, "vcenter", "thumbprint") != strings.TrimSuffix(strings.Repeat("0A:", 32), ":") ||
		path(vc, "vcenter", "skip_hostname_check") != true || path(vc, "vcenter", "port") != float64(443) {
		t.Fatalf("source create vc = %v", vc)
	}
	if out := x.ok("source", "get", "vc", lin()); !strings.Contains(out, "thumbprint 0A:0A:") || !strings.Contains(out, "hostname not checked") {
		t.Errorf("source get vc:\n%s", out)
	}
	g := x.json("network-mapping", "create", "dc1", "--source", "vc", "--map", "VM Network=lan", "--map", "DSwitch-Backup = lan")
	if path(g, "mappings", 0, "source_network") != "VM Network" ||
		path(g, "mappings", 1, "l3_network") != "l3Networks/lan" || path(g, "source") != "sources/vc" {
		t.Fatalf("network-mapping create = %v", g)
	}
	if r := x.run("network-mapping", "create", "bad", "--map", "VM Network=lan", "--map", "VM Network=lan"); r.code == 0 ||
		!strings.Contains(r.err, "network_mapping_group.mappings[1].source_network") {
		t.Errorf("network-mapping create with a source network twice: exit %d, %q", r.code, r.err)
	}
	if r := x.run("network-mapping", "create", "bad", "--map", "VM Network"); r.code == 0 || !strings.Contains(r.err, "SOURCE_NETWORK=L3_NETWORK") {
		t.Errorf("network-mapping create --map without '=': exit %d, %q", r.code, r.err)
	}
	g = x.json("network-mapping", "update", "dc1", "--map", "VM Network=lan", "--display-name", "DC 1")
	if n := len(path(g, "mappings").([]any)); n != 1 || path(g, "display_name") != "DC 1" {
		t.Fatalf("network-mapping update = %v", g)
	}
	if out := x.ok("network-mapping", "list", "--source", "vc", lin()); !strings.Contains(out, "networkMappingGroups/dc1") ||
		!strings.Contains(out, "VM Network→lan") {
		t.Errorf("network-mapping list:\n%s", out)
	}
	x.ok("network-mapping", "create", "gone", "--map", "x=lan")
	x.ok("network-mapping", "delete", "gone")
	if r := x.run("network-mapping", "get", "gone", lin()); r.code == 0 {
		t.Errorf("network-mapping get after delete: exit 0")
	}
	if r := x.run("source", "create", "vc2", "--type", "vcenter", "--address", "vc.example.net", "--user", "u",
		"--credential", "kvm-pass", "--thumbprint", "0a:0b"); r.code == 0 || !strings.Contains(r.err, "source.vcenter.thumbprint") {
		t.Errorf("source create with a short thumbprint: exit %d, %q", r.code, r.err)
	}
	ms := x.json("server", "create", "kvm-1", "--host", "kvm-1", "--type", "kvm", "--cache-path", e.cache, "--downstream", "500Mbps")
	if path(ms, "host") != "hosts/kvm-1" || path(ms, "enabled") != true {
		t.Fatalf("server create = %v", ms)
	}
}

func (e *clusterEnv) list(t *testing.T) {
	x := e.cli(t)
	lin := "--linearizable"
	checks := []struct {
		args []string
		path []any
		want any
	}{
		{[]string{"cluster", "list"}, []any{"clusters", 0, "zone"}, "dc1"},
		{[]string{"cluster", "get", "prod"}, []any{"display_name"}, "Production"},
		{[]string{"storage", "list", "--cluster", "prod"}, []any{"primary_storages", 0, "type"}, "PRIMARY_STORAGE_TYPE_LOCAL"},
		{[]string{"network", "list"}, []any{"l3_networks", 0, "ip_range_end"}, "10.0.0.199"},
		{[]string{"network", "get", "lan"}, []any{"prefix_length"}, float64(24)},
		{[]string{"credential", "list"}, []any{"credentials", 0, "type"}, "CREDENTIAL_TYPE_PASSWORD"},
		{[]string{"source", "list", "--type", "kvm"}, []any{"sources", 0, "kvm", "sasl_credential"}, "credentials/sasl"},
		{[]string{"source", "list", "--type", "vcenter"}, []any{"sources", 0, "vcenter", "skip_hostname_check"}, true},
		{[]string{"source", "get", "kvm-src"}, []any{"kvm", "address"}, "192.0.2.20"},
		{[]string{"server", "list"}, []any{"migration_servers", 0, "downstream_bits_per_second"}, "500000000"},
		{[]string{"server", "get", "kvm-1"}, []any{"cache_path"}, e.cache},
		{[]string{"host", "list"}, []any{"hosts", 0, "name"}, "hosts/kvm-1"},
		{[]string{"members", "list"}, []any{"leader_address"}, e.leader.Addr()},
	}
	for _, c := range checks {
		m := x.json(append(c.args, lin)...)
		if got := path(m, c.path...); got != c.want {
			t.Errorf("ferryctl %s: %v = %v, want %v\n%v", strings.Join(c.args, " "), c.path, got, c.want, m)
		}
	}
	if n := len(path(x.json("members", "list"), "members").([]any)); n != 3 {
		t.Errorf("members list shows %d members, want 3", n)
	}
	for _, cred := range path(x.json("credential", "list", lin), "credentials").([]any) {
		if fp, _ := path(cred, "fingerprint").(string); fp == "" || path(cred, "secret") != nil {
			t.Errorf("credential %v: want a fingerprint and no secret", cred)
		}
	}
	if out := x.ok("server", "list", "-o", "yaml", lin); !strings.Contains(out, "host: hosts/kvm-1\n") || !strings.Contains(out, "downstream_bandwidth: 500Mbps\n") {
		t.Errorf("server list -o yaml:\n%s", out)
	}
	table := x.ok("server", "list", lin)
	for _, want := range []string{"NAME", "CACHE PATH", "migrationServers/kvm-1", "hosts/kvm-1", "500Mbps", "unlimited"} {
		if !strings.Contains(table, want) {
			t.Errorf("server list table lacks %q:\n%s", want, table)
		}
	}
}

func (e *clusterEnv) serverVerbs(t *testing.T) {
	x := e.cli(t)
	ms := x.json("server", "bandwidth", "kvm-1", "--upstream", "100Mbps", "--downstream", "1000Mbps")
	if path(ms, "migration_server", "upstream_bandwidth") != "100Mbps" || path(ms, "migration_server", "downstream_bandwidth") != "1Gbps" {
		t.Fatalf("bandwidth set = %v", ms)
	}
	ms = x.json("server", "bandwidth", "kvm-1", "--clear-upstream")
	if path(ms, "migration_server", "upstream_bandwidth") != nil || path(ms, "migration_server", "downstream_bandwidth") != "1Gbps" {
		t.Fatalf("--clear-upstream = %v; want upstream unlimited, downstream kept", ms)
	}
	ms = x.json("server", "bandwidth", "kvm-1", "--downstream", "")
	if path(ms, "migration_server", "downstream_bandwidth") != nil {
		t.Fatalf(`--downstream "" = %v; want unlimited`, ms)
	}
	if ms = x.json("server", "disable", "kvm-1"); path(ms, "migration_server", "enabled") != nil {
		t.Fatalf("disable = %v", ms)
	}
	if ms = x.json("server", "enable", "kvm-1"); path(ms, "migration_server", "enabled") != true {
		t.Fatalf("enable = %v", ms)
	}

	// Every call sends a request_id: a fresh one, or --request-id, whose
	// late repeat does not undo a change made since.
	x.ok("server", "bandwidth", "kvm-1", "--upstream", "300Mbps", "--request-id", "cli-bw-1")
	x.ok("server", "bandwidth", "kvm-1", "--upstream", "400Mbps")
	ms = x.json("server", "bandwidth", "kvm-1", "--upstream", "300Mbps", "--request-id", "cli-bw-1")
	if got := path(ms, "migration_server", "upstream_bandwidth"); got != "400Mbps" {
		t.Fatalf("repeated --request-id answered upstream %v; want 400Mbps, the change made since", got)
	}
	r := x.run("server", "disable", "kvm-1", "--request-id", "cli-bw-1")
	if r.code == 0 || !strings.Contains(r.err, `INVALID_ARGUMENT: request_id: "cli-bw-1" was already used by SetMigrationServerBandwidth on migrationServers/kvm-1`) {
		t.Fatalf("reused --request-id: exit %d, %q", r.code, r.err)
	}
	fresh := map[string]bool{}
	for _, rec := range e.leader.Server.Ledger().Snapshot().GetRequests() {
		if strings.HasPrefix(rec.GetRequestId(), "ferryctl-") && rec.GetMethod() != "" {
			fresh[rec.GetMethod()+" "+rec.GetRequestId()] = true
		}
	}
	methods := map[string]int{}
	for k := range fresh {
		methods[strings.Fields(k)[0]]++
	}
	if methods["SetMigrationServerBandwidth"] != 4 || methods["DisableMigrationServer"] != 1 || methods["EnableMigrationServer"] != 1 {
		t.Fatalf("generated request_ids recorded per method: %v; want 4 bandwidth changes, 1 disable, 1 enable", methods)
	}
	x.ok("server", "bandwidth", "kvm-1", "--clear-upstream")
}

func (e *clusterEnv) hostMaintenance(t *testing.T) {
	x := e.cli(t)
	if h := x.json("host", "maintenance", "kvm-1", "--on"); path(h, "host", "maintenance") != true || path(h, "host", "name") != "hosts/kvm-1" {
		t.Fatalf("maintenance --on = %v", h)
	}
	if out := x.ok("host", "list"); !strings.Contains(out, "MAINTENANCE") || !strings.Contains(out, "hosts/kvm-1") {
		t.Fatalf("host list:\n%s", out)
	}
	if h := x.json("host", "maintenance", "hosts/kvm-1", "--off"); path(h, "host", "maintenance") != nil {
		t.Fatalf("maintenance --off = %v", h)
	}
	r := x.run("host", "maintenance", "kvm-1")
	if r.code != exitUsage || !strings.Contains(r.err, "give exactly one of --on and --off") {
		t.Fatalf("maintenance without --on/--off: exit %d, stderr %q", r.code, r.err)
	}
	r = x.run("host", "maintenance", "nosuch", "--on")
	if r.code != exitError || !strings.HasPrefix(r.err, "ferryctl: NOT_FOUND: name: host hosts/nosuch not found") {
		t.Fatalf("maintenance of a missing host: exit %d, stderr %q", r.code, r.err)
	}
}

func (e *clusterEnv) settings(t *testing.T) {
	x := e.cli(t)
	s := x.json("settings", "update", "--job-parallelism", "20", "--cache-retention", "72h")
	if path(s, "job_parallelism") != float64(20) || path(s, "cache_retention") != "259200s" {
		t.Fatalf("settings update = %v", s)
	}
	s = x.json("settings", "get", "--linearizable")
	if path(s, "job_parallelism") != float64(20) || path(s, "agent_grace_period") != "300s" {
		t.Fatalf("settings get = %v; want the update, other fields kept", s)
	}
	if got := path(s, "guest_shutdown_timeout"); got != "600s" {
		t.Fatalf("guest_shutdown_timeout = %v, want the default 600s", got)
	}
	s = x.json("settings", "update", "--guest-shutdown-timeout", "2m")
	if path(s, "guest_shutdown_timeout") != "120s" || path(s, "job_parallelism") != float64(20) {
		t.Fatalf("settings update --guest-shutdown-timeout = %v", s)
	}
	if r := x.run("settings", "update", "--guest-shutdown-timeout", "100ms"); r.code == 0 ||
		!strings.Contains(r.err, "settings.guest_shutdown_timeout") {
		t.Fatalf("a 100ms guest shutdown timeout: exit %d, %q", r.code, r.err)
	}

	// --etag: an update from a stale read is ABORTED and changes nothing.
	read, _ := x.json("settings", "get", "--linearizable")["etag"].(string)
	s = x.json("settings", "update", "--job-parallelism", "21", "--etag", read)
	if path(s, "job_parallelism") != float64(21) || path(s, "etag") == read || read == "" {
		t.Fatalf("settings update --etag %q = %v", read, s)
	}
	r := x.run("settings", "update", "--job-parallelism", "22", "--etag", read)
	if r.code == 0 || !strings.Contains(r.err, fmt.Sprintf("ABORTED: settings.etag: settings changed since etag %q was read", read)) {
		t.Fatalf("stale --etag: exit %d, %q", r.code, r.err)
	}
	if got := path(x.json("settings", "get", "--linearizable"), "job_parallelism"); got != float64(21) {
		t.Fatalf("job_parallelism after the aborted update = %v", got)
	}
	x.ok("settings", "update", "--job-parallelism", "20")
}

func (e *clusterEnv) errors(t *testing.T) {
	x := e.cli(t)
	plan := writePlan(t, "nonics", []string{"web-x"}, false)
	r := x.run("job", "create", "-f", plan)
	if r.code != exitError || !strings.HasPrefix(r.err, "ferryctl: INVALID_ARGUMENT: jobs[0].target.nics: ") {
		t.Fatalf("job without a NIC: exit %d, stderr %q", r.code, r.err)
	}
	r = x.run("server", "bandwidth", "kvm-1", "--upstream", "5Kbps")
	if r.code != exitError || !strings.HasPrefix(r.err, "ferryctl: INVALID_ARGUMENT: upstream_bandwidth") {
		t.Fatalf("bandwidth below 8Kbps: exit %d, stderr %q", r.code, r.err)
	}
	r = x.run("server", "get", "nosuch")
	if r.code != exitError || !strings.HasPrefix(r.err, "ferryctl: NOT_FOUND: ") {
		t.Fatalf("get of a missing server: exit %d, stderr %q", r.code, r.err)
	}
}

func (e *clusterEnv) planJobs(t *testing.T) {
	x := e.cli(t)
	plan := writePlan(t, "plan-1", []string{"web-1", "web-2"}, true)
	jobCount := func() int {
		l, _ := path(x.json("job", "list", lin()), "jobs").([]any)
		return len(l)
	}
	before := jobCount()
	// Without --yes, and stdin not a terminal: the preview, then a refusal.
	r := x.run("job", "create", "-f", plan)
	if r.code != exitUsage || !strings.Contains(r.err, "standard input is not a terminal, so ferryctl cannot ask whether to create 2 job(s)") ||
		!strings.Contains(r.out, "web-1") || !strings.Contains(r.out, "2 job(s): the batch fits") || !strings.Contains(r.out, "addresses") {
		t.Fatalf("job create without --yes: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.out, r.err)
	}
	t.Logf("job create without --yes printed:\n%s", r.out)
	// On a terminal, anything but y declines.
	r = x.runTTY("n\n", "job", "create", "-f", plan)
	if r.code != exitError || !strings.Contains(r.err, "Create 2 job(s)? [y/N]") || !strings.Contains(r.err, "not confirmed; nothing was created") {
		t.Fatalf("job create answered n: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.out, r.err)
	}
	p := x.json("job", "preview", "-f", plan)
	if path(p, "fits") != true || path(p, "jobs", 1, "source_vm") != "web-2" || path(p, "jobs", 0, "name") != nil ||
		path(p, "usages", 0, "resource") != "clusters/prod" || len(path(p, "usages").([]any)) != 5 ||
		path(p, "usages", 4, "kind") != "PREVIEW_RESOURCE_KIND_CACHE_BYTES" || path(p, "usages", 4, "resource") != "migrationServers/kvm-1" {
		t.Fatalf("job preview -o json = %v", p)
	}
	if n := jobCount(); n != before {
		t.Fatalf("%d jobs after refusals and a preview, %d before", n, before)
	}
	first := x.json("job", "create", "-f", plan, "--yes")
	if path(first, "preview", "fits") != true || path(first, "preview", "jobs", 0, "source_vm") != "web-1" {
		t.Fatalf("job create --yes -o json has no preview: %v", first)
	}
	r = x.runTTY("y\n", "job", "create", "-f", plan, "-o", "json")
	var again map[string]any
	if err := json.Unmarshal([]byte(r.out), &again); r.code != 0 || err != nil || !strings.Contains(r.err, "Create 2 job(s)? [y/N]") {
		t.Fatalf("job create answered y: exit %d, %v\nstdout:\n%s\nstderr:\n%s", r.code, err, r.out, r.err)
	}
	var names []string
	for i := 0; i < 2; i++ {
		name, _ := path(first, "jobs", i, "name").(string)
		if name == "" || path(again, "jobs", i, "name") != name {
			t.Fatalf("create = %v, repeat = %v; want two jobs, the same both times (request_id)", first, again)
		}
		names = append(names, name)
	}
	r = x.run(append([]string{"job", "watch"}, names...)...)
	if r.code != 0 {
		t.Fatalf("job watch: exit %d\n%s\n%s", r.code, r.out, r.err)
	}
	t.Logf("job watch printed:\n%s", r.out)
	for _, want := range []string{"progress", "RUNNING/CONVERTING", "%", "SUCCEEDED", names[0], names[1]} {
		if !strings.Contains(r.out, want) {
			t.Errorf("job watch output lacks %q:\n%s", want, r.out)
		}
	}
	if lines := strings.Count(r.out, "\n"); lines < 4 {
		t.Errorf("job watch printed %d lines, want one per update:\n%s", lines, r.out)
	}
	j := x.json("job", "get", names[0], "--linearizable")
	if path(j, "state") != "MIGRATION_JOB_STATE_SUCCEEDED" || path(j, "assigned_host") != "hosts/kvm-1" {
		t.Fatalf("job get = %v", j)
	}
	// The test agent's copier records no checksums: the job says so.
	if r := x.run("job", "get", names[0], "--linearizable"); r.code != 0 || !strings.Contains(r.out, "no: some disks were copied without checksums") {
		t.Errorf("job get does not say the job is unverified: exit %d\n%s", r.code, r.out)
	}
	if n := len(path(x.json("job", "list", "--state", "succeeded", lin()), "jobs").([]any)); n != 2 {
		t.Fatalf("job list --state succeeded: %d jobs, want 2", n)
	}
	x.ok("job", "delete", names[0])
	if r := x.run("job", "get", names[0], lin()); r.code != exitError || !strings.Contains(r.err, "NOT_FOUND") {
		t.Fatalf("get of a deleted job: exit %d, %q", r.code, r.err)
	}
}

func (e *clusterEnv) flagJob(t *testing.T) {
	x := e.cli(t)
	created := x.json("job", "create", "--source", "kvm-src", "--migration-server", "kvm-1", "--vm", "web-3",
		"--cluster", "prod", "--storage", "local-1", "--cpus", "2", "--memory", "4GiB",
		"--disk", "vda=64MiB,name=root", "--nic", "52:54:00:00:00:03=lan,ip=10.0.0.150", "--no-start", "--yes")
	name, _ := path(created, "jobs", 0, "name").(string)
	if name == "" || path(created, "jobs", 0, "target", "nics", 0, "ip") != "10.0.0.150" || path(created, "jobs", 0, "options", "auto_start") != false {
		t.Fatalf("job create from flags = %v", created)
	}
	if r := x.run("job", "restart", name); r.code != exitError || !strings.Contains(r.err, "FAILED_PRECONDITION") {
		t.Fatalf("restart of an unfinished job: exit %d, %q", r.code, r.err)
	}
	if out := x.ok("job", "cancel", name, "--reason", "wrong network"); !strings.Contains(out, "CANCELLED") {
		t.Fatalf("job cancel: %s", out)
	}
	if out := x.ok("job", "restart", name); !strings.Contains(out, "QUEUED") && !strings.Contains(out, "RUNNING") {
		t.Fatalf("job restart: %s", out)
	}
	r := x.run("job", "watch", name, "-o", "json")
	if r.code != 0 {
		t.Fatalf("job watch -o json: exit %d\n%s", r.code, r.err)
	}
	var last map[string]any
	for _, line := range strings.Split(strings.TrimSpace(r.out), "\n") {
		if err := json.Unmarshal([]byte(line), &last); err != nil {
			t.Fatalf("watch line %q is not JSON: %v", line, err)
		}
	}
	if path(last, "job", "name") != name || path(last, "job", "state") != "MIGRATION_JOB_STATE_SUCCEEDED" {
		t.Fatalf("last watch event = %v", last)
	}
}

func (e *clusterEnv) deadAddress(t *testing.T) {
	x := e.cli(t)
	m := x.json("--server", "127.0.0.1:1,"+e.follower.Addr(), "members", "list")
	if path(m, "leader_address") != e.leader.Addr() {
		t.Fatalf("members list = %v", m)
	}
}

func (e *clusterEnv) leaderKilled(t *testing.T) {
	addrs := []string{e.leader.Addr()}
	for _, n := range e.c.Followers() {
		addrs = append(addrs, n.Addr())
	}
	e.c.Kill(e.leader)
	killed := time.Now()
	x := e.cli(t)
	all := strings.Join(addrs, ",")
	created := x.json("--server", all, "cluster", "create", "after-kill", "--zone", "dc2")
	if path(created, "name") != "clusters/after-kill" {
		t.Fatalf("create after the leader was killed = %v", created)
	}
	t.Logf("create landed %v after the leader was killed", time.Since(killed).Round(time.Millisecond))
	m := x.json("--server", all, "members", "list", "--linearizable")
	if l := path(m, "leader_address"); l == e.leader.Addr() || l == nil {
		t.Fatalf("leader after the kill = %v", l)
	}
	if n := len(path(x.json("--server", all, "cluster", "list", "--linearizable"), "clusters").([]any)); n != 2 {
		t.Fatalf("%d clusters after the kill, want 2 (none lost, none doubled)", n)
	}
}

func lin() string { return "--linearizable" }

// writePlan writes a YAML plan of one job per VM; without NICs when nics
// is false.
func writePlan(t *testing.T, requestID string, vms []string, nics bool) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("source: sources/kvm-src\nmigration_server: migrationServers/kvm-1\nrequest_id: " + requestID + "\njobs:\n")
	for i, vm := range vms {
		b.WriteString("  - source_vm: " + vm + "\n    target:\n      vm_name: " + vm + "\n")
		b.WriteString("      cluster: clusters/prod\n      primary_storage: primaryStorages/local-1\n")
		b.WriteString("      cpus: 1\n      memory_bytes: 1073741824\n")
		b.WriteString("      disks:\n        - {source_disk: vda, display_name: root, size_bytes: 67108864}\n")
		if nics {
			b.WriteString("      nics:\n        - {source_mac: \"52:54:00:00:01:0" + string(rune('0'+i)) + "\", l3_network: l3Networks/lan}\n")
		}
		b.WriteString("    options: {compression: COMPRESSION_NONE}\n")
	}
	p := filepath.Join(t.TempDir(), requestID+".yaml")
	if err := os.WriteFile(p, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func (e *clusterEnv) updates(t *testing.T) {
	x := e.cli(t)
	if c := x.json("cluster", "update", "prod", "--description", "hall 2"); path(c, "description") != "hall 2" || path(c, "zone") != "dc1" {
		t.Fatalf("cluster update = %v", c)
	}
	if s := x.json("storage", "update", "local-1", "--display-name", "Local"); path(s, "display_name") != "Local" ||
		path(s, "path") != "/var/lib/ferry/images" {
		t.Fatalf("storage update = %v", s)
	}
	if n := x.json("network", "update", "lan", "--range-end", "10.0.0.250", "--dns", "10.0.0.53,10.0.0.54"); path(n, "ip_range_end") != "10.0.0.250" ||
		path(n, "dns_servers", 1) != "10.0.0.54" ||
		path(n, "ip_range_start") != "10.0.0.100" || path(n, "gateway") != "10.0.0.1" {
		t.Fatalf("network update = %v", n)
	}
	if r := x.run("network", "update", "lan", "--range-end", "10.0.0.50"); r.code == 0 || !strings.Contains(r.err, "l3_network.ip_range_end") {
		t.Errorf("network update with the end before the start: exit %d, %q", r.code, r.err)
	}
	before := x.json("credential", "get", "kvm-pass")
	r := x.runIn(strings.NewReader("n3w-s3cret\n"), "credential", "update", "kvm-pass", "--password-stdin", "-o", "json")
	if r.code != 0 || strings.Contains(r.out+r.err, "n3w-s3cret") || !strings.Contains(r.out, "fingerprint") ||
		strings.Contains(r.out, path(before, "fingerprint").(string)) {
		t.Fatalf("credential update: exit %d, output %q %q (a new fingerprint, never the secret)", r.code, r.out, r.err)
	}
	if s := x.json("source", "update", "kvm-src", "--address", "192.0.2.21"); path(s, "kvm", "address") != "192.0.2.21" ||
		path(s, "kvm", "sasl_user") != "virt" {
		t.Fatalf("source update = %v", s)
	}
	if r := x.run("source", "update", "kvm-src", "--thumbprint", "0a"); r.code == 0 || !strings.Contains(r.err, "--type vcenter") {
		t.Errorf("source update of a kvm source with a vcenter flag: exit %d, %q", r.code, r.err)
	}
	ms := x.json("server", "update", "kvm-1", "--description", "rack 4")
	if path(ms, "description") != "rack 4" || path(ms, "downstream_bandwidth") == "" {
		t.Fatalf("server update = %v", ms)
	}
	if r := x.run("server", "update", "kvm-1", "--description", "x", "--etag", "0123"); r.code == 0 || !strings.Contains(r.err, "migration_server.etag") {
		t.Errorf("server update with a stale etag: exit %d, %q", r.code, r.err)
	}
	if r := x.run("server", "update", "kvm-1"); r.code == 0 || !strings.Contains(r.err, "nothing to change") {
		t.Errorf("server update without flags: exit %d, %q", r.code, r.err)
	}
	// The usage history began when the server was made (the agent's
	// facts: 50 of 100 GiB free).
	if out := x.ok("server", "usage", "kvm-1", "--span", "15m"); !strings.Contains(out, "migrationServers/kvm-1 cache used over the last 15m (15s per point): now 50.0%") ||
		!strings.Contains(out, " 100% │") || !strings.Contains(out, "█") {
		t.Errorf("server usage:\n%s", out)
	}
	if u := x.json("server", "usage", "kvm-1", "--span", "1y"); path(u, "points", 0, "used_percent") != float64(50) || path(u, "resolution") != "21600s" {
		t.Errorf("server usage -o json = %v", u)
	}
	if r := x.run("server", "usage", "kvm-1", "--span", "3h"); r.code != exitUsage || !strings.Contains(r.err, "15m, 1h, 6h, 1d, 2w, 8w, 1y") {
		t.Errorf("server usage --span 3h: exit %d, %q", r.code, r.err)
	}
}

// exportPlan: the plan-file jobs, exported, are created unchanged on a
// second, one-node Ferry with an inventory of the same names, and export
// from there as the same plan: equal job specs.
func (e *clusterEnv) exportPlan(t *testing.T) {
	x := e.cli(t)
	if r := x.run("job", "update", "--help"); r.code != 0 {
		t.Fatalf("job update --help: %d %s", r.code, r.err)
	}
	filters := []string{"job", "export", "--source", "kvm-src", "--migration-server", "kvm-1"}
	exported := x.ok(filters...)
	if !strings.Contains(exported, "source_vm: web-2") || !strings.Contains(exported, "source: sources/kvm-src") ||
		!strings.Contains(exported, "ip: 10.0.0.1") || strings.Contains(exported, "request_id") || strings.Contains(exported, "state") {
		t.Fatalf("job export:\n%s", exported)
	}
	planFile := filepath.Join(t.TempDir(), "wave.yaml")
	if err := os.WriteFile(planFile, []byte(exported), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := x.run("job", "export", "web-1", "--state", "failed"); r.code != exitUsage || !strings.Contains(r.err, "not both") {
		t.Errorf("job export with names and filters: exit %d, %q", r.code, r.err)
	}

	c2 := testcluster.Start(t, 1)
	n := c2.Leader(10 * time.Second)
	startAgent(t, c2, n.Addr(), "kvm-1", slowCopier(1, time.Millisecond))
	y := &cli{t: t, server: n.Addr(), tlsDir: c2.TLSDir}
	y.waitHost("kvm-1")
	y.ok("cluster", "create", "prod")
	y.ok("storage", "create", "local-1", "--cluster", "prod", "--type", "local", "--path", "/var/lib/ferry/images")
	y.ok("network", "create", "lan", "--cluster", "prod", "--bridge", "br0", "--ip-range", "10.0.0.100-10.0.0.199", "--gateway", "10.0.0.1", "--prefix-length", "24")
	y.runIn(strings.NewReader("s3cret\n"), "credential", "create", "kvm-pass", "--password-stdin")
	y.ok("source", "create", "kvm-src", "--type", "kvm", "--address", "192.0.2.20", "--credential", "kvm-pass")
	y.ok("server", "create", "kvm-1", "--host", "kvm-1", "--type", "kvm", "--cache-path", t.TempDir())
	created := y.json("job", "create", "-f", planFile, "--yes")
	if jobs, _ := path(created, "jobs").([]any); len(jobs) != strings.Count(exported, "source_vm:") {
		t.Fatalf("job create -f of the exported plan = %v", created)
	}
	again := y.ok("job", "export", "--source", "kvm-src", "--migration-server", "kvm-1")
	if again != exported {
		t.Errorf("the plan exported from the second Ferry differs from the first:\nfirst:\n%s\nsecond:\n%s", exported, again)
	}
}
