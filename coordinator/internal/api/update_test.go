package api

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

func mask(paths ...string) *fieldmaskpb.FieldMask { return &fieldmaskpb.FieldMask{Paths: paths} }

func TestUpdateMigrationServer(t *testing.T) {
	e := newEnv(t, true)
	e.seed()
	c := ctx(t)
	before := must[*ferryv1.MigrationServer](t)(e.servers.GetMigrationServer(c, &ferryv1.GetMigrationServerRequest{Name: "migrationServers/kvm"}))
	if before.GetEtag() == "" {
		t.Fatalf("no etag: %v", before)
	}
	e.now = e.now.Add(1e9)
	up := must[*ferryv1.MigrationServer](t)(e.servers.UpdateMigrationServer(c, &ferryv1.UpdateMigrationServerRequest{
		MigrationServer: &ferryv1.MigrationServer{Name: before.GetName(), DisplayName: "KVM one", Description: "rack 4\nrow B",
			UpstreamBandwidth: "200Mbps", CachePath: "/ignored", Etag: before.GetEtag()},
		UpdateMask: mask("display_name", "description", "upstream_bandwidth")}))
	if up.GetDisplayName() != "KVM one" || up.GetDescription() != "rack 4\nrow B" || up.GetUpstreamBitsPerSecond() != 200_000_000 ||
		up.GetCachePath() != before.GetCachePath() || !proto.Equal(up.GetCreateTime(), before.GetCreateTime()) ||
		up.GetUpdateTime() == nil || up.GetEtag() == before.GetEtag() || !up.GetConnected() {
		t.Fatalf("updated server = %v", up)
	}
	// The old etag is stale now; an unknown path and a bad limit are named.
	_, err := e.servers.UpdateMigrationServer(c, &ferryv1.UpdateMigrationServerRequest{
		MigrationServer: &ferryv1.MigrationServer{Name: before.GetName(), DisplayName: "x", Etag: before.GetEtag()}, UpdateMask: mask("display_name")})
	wantCode(t, err, codes.Aborted, "migration_server.etag: ")
	_, err = e.servers.UpdateMigrationServer(c, &ferryv1.UpdateMigrationServerRequest{
		MigrationServer: &ferryv1.MigrationServer{Name: before.GetName()}, UpdateMask: mask("cache_path")})
	wantCode(t, err, codes.InvalidArgument, `update_mask.paths[0]: "cache_path" cannot be updated`)
	_, err = e.servers.UpdateMigrationServer(c, &ferryv1.UpdateMigrationServerRequest{
		MigrationServer: &ferryv1.MigrationServer{Name: before.GetName(), UpstreamBandwidth: "fast"}, UpdateMask: mask("upstream_bandwidth")})
	wantCode(t, err, codes.InvalidArgument, "migration_server.upstream_bandwidth: ")
	_, err = e.servers.UpdateMigrationServer(c, &ferryv1.UpdateMigrationServerRequest{
		MigrationServer: &ferryv1.MigrationServer{Name: "migrationServers/nope"}, UpdateMask: mask("display_name")})
	wantCode(t, err, codes.NotFound, "migration_server.name: ")
	got := must[*ferryv1.MigrationServer](t)(e.servers.GetMigrationServer(c, &ferryv1.GetMigrationServerRequest{Name: before.GetName()}))
	if got.GetEtag() != up.GetEtag() || got.GetDisplayName() != "KVM one" {
		t.Errorf("after refused updates: %v", got)
	}
}

func TestUpdateSourceForgetsTheHostKeyOfAnOldAddress(t *testing.T) {
	e := newEnv(t, true)
	e.seed()
	c := ctx(t)
	const key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHGZlwTOmj2NYo0ZYhK+3spBQ3UHE3sfFzaNwu4yKbYL"
	e.apply(&ledgerv1.Command{Op: &ledgerv1.Command_RecordSourceHostKey{RecordSourceHostKey: &ledgerv1.RecordSourceHostKey{Name: "sources/kvm", HostKey: key}}})
	must[*ferryv1.Credential](t)(e.sources.CreateCredential(c, &ferryv1.CreateCredentialRequest{Credential: &ferryv1.Credential{
		Name: "credentials/pw2", Type: ferryv1.CredentialType_CREDENTIAL_TYPE_PASSWORD, Secret: "another"}}))
	// The user and credential change: the host is the same, its key stays.
	up := must[*ferryv1.Source](t)(e.sources.UpdateSource(c, &ferryv1.UpdateSourceRequest{
		Source:     &ferryv1.Source{Name: "sources/kvm", Kvm: &ferryv1.KvmConnection{User: "ferry", Credential: "credentials/pw2"}},
		UpdateMask: mask("kvm.user", "kvm.credential")}))
	if k := up.GetKvm(); k.GetUser() != "ferry" || k.GetCredential() != "credentials/pw2" || k.GetAddress() != "192.0.2.10" ||
		k.GetSshPort() != 22 || k.GetObservedHostKey() != key {
		t.Fatalf("updated source = %v", up)
	}
	// A new address: the key seen at the old one is forgotten; the port,
	// cleared, is the default again.
	up = must[*ferryv1.Source](t)(e.sources.UpdateSource(c, &ferryv1.UpdateSourceRequest{
		Source: &ferryv1.Source{Name: "sources/kvm", Kvm: &ferryv1.KvmConnection{Address: "192.0.2.11"}}, UpdateMask: mask("kvm.address", "kvm.ssh_port")}))
	if k := up.GetKvm(); k.GetAddress() != "192.0.2.11" || k.GetSshPort() != 22 || k.GetObservedHostKey() != "" || k.GetUser() != "ferry" {
		t.Fatalf("source at a new address = %v", up)
	}
	_, err := e.sources.UpdateSource(c, &ferryv1.UpdateSourceRequest{
		Source: &ferryv1.Source{Name: "sources/kvm", Kvm: &ferryv1.KvmConnection{Credential: "credentials/nope"}}, UpdateMask: mask("kvm.credential")})
	wantCode(t, err, codes.NotFound, "source.kvm.credential: ")
	_, err = e.sources.UpdateSource(c, &ferryv1.UpdateSourceRequest{
		Source: &ferryv1.Source{Name: "sources/kvm", Kvm: &ferryv1.KvmConnection{Address: "bad address!"}}, UpdateMask: mask("kvm")})
	wantCode(t, err, codes.InvalidArgument, "source.kvm.address: ")
	_, err = e.sources.UpdateSource(c, &ferryv1.UpdateSourceRequest{
		Source: &ferryv1.Source{Name: "sources/kvm"}, UpdateMask: mask("vcenter.address")})
	wantCode(t, err, codes.InvalidArgument, `update_mask.paths[0]: "vcenter.address" cannot be updated`)
	vc := must[*ferryv1.Source](t)(e.sources.UpdateSource(c, &ferryv1.UpdateSourceRequest{
		Source: &ferryv1.Source{Name: "sources/vc", Vcenter: &ferryv1.VCenterConnection{Port: 8443}}, UpdateMask: mask("vcenter.port")}))
	if vc.GetVcenter().GetPort() != 8443 || vc.GetVcenter().GetAddress() != "vc.example.com" {
		t.Fatalf("vcenter source = %v", vc)
	}
}

func TestUpdateCredentialRotatesTheSecret(t *testing.T) {
	e := newEnv(t, true)
	e.seed()
	c := ctx(t)
	before := must[*ferryv1.Credential](t)(e.sources.GetCredential(c, &ferryv1.GetCredentialRequest{Name: "credentials/pw"}))
	const rotated = "rotated-Secret-9f8e"
	up := must[*ferryv1.Credential](t)(e.sources.UpdateCredential(c, &ferryv1.UpdateCredentialRequest{
		Credential: &ferryv1.Credential{Name: "credentials/pw", Secret: rotated, Etag: before.GetEtag()}, UpdateMask: mask("secret")}))
	if up.GetSecret() != "" || up.GetFingerprint() == before.GetFingerprint() || up.GetEtag() == before.GetEtag() ||
		up.GetType() != ferryv1.CredentialType_CREDENTIAL_TYPE_PASSWORD || up.GetUpdateTime() == nil {
		t.Fatalf("rotated credential = %v", up)
	}
	sc, _ := e.ledger.Credential("credentials/pw")
	plain, err := e.sealer.Open(sc.GetSealedSecret(), []byte("credentials/pw"))
	if err != nil || string(plain) != rotated {
		t.Fatalf("sealed secret opens to %q, %v", plain, err)
	}
	if strings.Contains(e.logs.String(), rotated) {
		t.Error("the rotated secret is in the log")
	}
	_, err = e.sources.UpdateCredential(c, &ferryv1.UpdateCredentialRequest{
		Credential: &ferryv1.Credential{Name: "credentials/pw", Secret: ""}, UpdateMask: mask("secret")})
	wantCode(t, err, codes.InvalidArgument, "credential.secret: required")
	_, err = e.sources.UpdateCredential(c, &ferryv1.UpdateCredentialRequest{
		Credential: &ferryv1.Credential{Name: "credentials/pw", Type: ferryv1.CredentialType_CREDENTIAL_TYPE_PRIVATE_KEY}, UpdateMask: mask("type")})
	wantCode(t, err, codes.InvalidArgument, `update_mask.paths[0]: "type" cannot be updated`)
	_, err = e.sources.UpdateCredential(c, &ferryv1.UpdateCredentialRequest{
		Credential: &ferryv1.Credential{Name: "credentials/pw", DisplayName: "x", Etag: before.GetEtag()}, UpdateMask: mask("display_name")})
	wantCode(t, err, codes.Aborted, "credential.etag: ")
}

func TestUpdateL3NetworkKeepsAddressesInUse(t *testing.T) {
	e := newEnv(t, true)
	e.seed()
	c := ctx(t)
	e.queuedJob("migrationJobs/holder", "10.0.0.15")
	// Widened: fine.
	up := must[*ferryv1.L3Network](t)(e.inv.UpdateL3Network(c, &ferryv1.UpdateL3NetworkRequest{
		L3Network:  &ferryv1.L3Network{Name: "l3Networks/net1", IpRangeStart: "10.0.0.2", IpRangeEnd: "10.0.0.200", Gateway: "10.0.0.254", Description: "widened"},
		UpdateMask: mask("ip_range_start", "ip_range_end", "gateway", "description")}))
	if up.GetIpRangeStart() != "10.0.0.2" || up.GetIpRangeEnd() != "10.0.0.200" || up.GetGateway() != "10.0.0.254" ||
		up.GetBridge() != "br0" || up.GetPrefixLength() != 24 || up.GetDescription() != "widened" {
		t.Fatalf("widened network = %v", up)
	}
	// Shrunk past the held address, or the gateway onto it: refused.
	_, err := e.inv.UpdateL3Network(c, &ferryv1.UpdateL3NetworkRequest{
		L3Network: &ferryv1.L3Network{Name: "l3Networks/net1", IpRangeEnd: "10.0.0.14"}, UpdateMask: mask("ip_range_end")})
	wantCode(t, err, codes.FailedPrecondition, "l3_network.ip_range_end: 10.0.0.15 is held by migrationJobs/holder and would fall outside the range 10.0.0.2-10.0.0.14")
	_, err = e.inv.UpdateL3Network(c, &ferryv1.UpdateL3NetworkRequest{
		L3Network: &ferryv1.L3Network{Name: "l3Networks/net1", Gateway: "10.0.0.15"}, UpdateMask: mask("gateway")})
	wantCode(t, err, codes.FailedPrecondition, "l3_network.gateway: 10.0.0.15 is held by migrationJobs/holder")
	_, err = e.inv.UpdateL3Network(c, &ferryv1.UpdateL3NetworkRequest{
		L3Network: &ferryv1.L3Network{Name: "l3Networks/net1", IpRangeEnd: "10.0.1.5"}, UpdateMask: mask("ip_range_end")})
	wantCode(t, err, codes.InvalidArgument, "l3_network.ip_range_end: 10.0.1.5 is outside the subnet 10.0.0.0/24")
	dns := must[*ferryv1.L3Network](t)(e.inv.UpdateL3Network(c, &ferryv1.UpdateL3NetworkRequest{
		L3Network: &ferryv1.L3Network{Name: "l3Networks/net1", DnsServers: []string{"10.0.0.2", "2001:db8::0:53"}}, UpdateMask: mask("dns_servers")}))
	if got := dns.GetDnsServers(); len(got) != 2 || got[1] != "2001:db8::53" || dns.GetIpRangeEnd() != "10.0.0.200" {
		t.Errorf("network with DNS servers = %v", dns)
	}
	_, err = e.inv.UpdateL3Network(c, &ferryv1.UpdateL3NetworkRequest{
		L3Network: &ferryv1.L3Network{Name: "l3Networks/net1", DnsServers: []string{"dns.example"}}, UpdateMask: mask("dns_servers")})
	wantCode(t, err, codes.InvalidArgument, `l3_network.dns_servers[0]: "dns.example" is not an IP address`)
	_, err = e.inv.UpdateL3Network(c, &ferryv1.UpdateL3NetworkRequest{
		L3Network: &ferryv1.L3Network{Name: "l3Networks/net1", Bridge: "br1"}, UpdateMask: mask("bridge")})
	wantCode(t, err, codes.InvalidArgument, `update_mask.paths[0]: "bridge" cannot be updated`)
	// Freed once the job is cancelled: the range may shrink.
	e.apply(&ledgerv1.Command{Op: &ledgerv1.Command_CancelMigrationJob{CancelMigrationJob: &ledgerv1.CancelMigrationJob{Name: "migrationJobs/holder"}}})
	must[*ferryv1.L3Network](t)(e.inv.UpdateL3Network(c, &ferryv1.UpdateL3NetworkRequest{
		L3Network: &ferryv1.L3Network{Name: "l3Networks/net1", IpRangeEnd: "10.0.0.14"}, UpdateMask: mask("ip_range_end")}))
}

func TestUpdateLabels(t *testing.T) {
	e := newEnv(t, true)
	e.seed()
	c := ctx(t)
	cl := must[*ferryv1.Cluster](t)(e.inv.UpdateCluster(c, &ferryv1.UpdateClusterRequest{
		Cluster: &ferryv1.Cluster{Name: "clusters/c1", DisplayName: "Cluster one", Zone: "zone-a", Description: "the first"}}))
	if cl.GetDisplayName() != "Cluster one" || cl.GetZone() != "zone-a" || cl.GetDescription() != "the first" || cl.GetEtag() == "" {
		t.Fatalf("cluster = %v", cl)
	}
	ps := must[*ferryv1.PrimaryStorage](t)(e.inv.UpdatePrimaryStorage(c, &ferryv1.UpdatePrimaryStorageRequest{
		PrimaryStorage: &ferryv1.PrimaryStorage{Name: "primaryStorages/nfs", Description: "filer 2", Path: "/elsewhere"}, UpdateMask: mask("description")}))
	if ps.GetDescription() != "filer 2" || ps.GetPath() != "/mnt/nfs" {
		t.Fatalf("primary storage = %v", ps)
	}
	_, err := e.inv.UpdatePrimaryStorage(c, &ferryv1.UpdatePrimaryStorageRequest{
		PrimaryStorage: &ferryv1.PrimaryStorage{Name: "primaryStorages/nfs", Path: "/elsewhere"}, UpdateMask: mask("path")})
	wantCode(t, err, codes.InvalidArgument, `update_mask.paths[0]: "path" cannot be updated`)
	_, err = e.inv.UpdateCluster(c, &ferryv1.UpdateClusterRequest{
		Cluster: &ferryv1.Cluster{Name: "clusters/c1", Description: "bell\a"}, UpdateMask: mask("description")})
	wantCode(t, err, codes.InvalidArgument, "cluster.description: must not contain control characters")

	req := jobsReq(1)
	req.Jobs[0].DisplayName, req.Jobs[0].Description = "wave 1: web", "first wave"
	job := must[*ferryv1.CreateMigrationJobsResponse](t)(e.jobs.CreateMigrationJobs(c, req)).GetJobs()[0]
	if job.GetDisplayName() != "wave 1: web" || job.GetDescription() != "first wave" || job.GetEtag() == "" {
		t.Fatalf("created job = %v", job)
	}
	up := must[*ferryv1.MigrationJob](t)(e.jobs.UpdateMigrationJob(c, &ferryv1.UpdateMigrationJobRequest{
		MigrationJob: &ferryv1.MigrationJob{Name: job.GetName(), Description: "moved to wave 2", DisplayName: "ignored", Etag: job.GetEtag()},
		UpdateMask:   mask("description")}))
	if up.GetDescription() != "moved to wave 2" || up.GetDisplayName() != "wave 1: web" || up.GetState() != job.GetState() ||
		!proto.Equal(up.GetTarget(), job.GetTarget()) {
		t.Fatalf("updated job = %v", up)
	}
	_, err = e.jobs.UpdateMigrationJob(c, &ferryv1.UpdateMigrationJobRequest{
		MigrationJob: &ferryv1.MigrationJob{Name: job.GetName(), DisplayName: "x", Etag: job.GetEtag()}, UpdateMask: mask("display_name")})
	wantCode(t, err, codes.Aborted, "migration_job.etag: ")
	_, err = e.jobs.UpdateMigrationJob(c, &ferryv1.UpdateMigrationJobRequest{
		MigrationJob: &ferryv1.MigrationJob{Name: job.GetName()}, UpdateMask: mask("target")})
	wantCode(t, err, codes.InvalidArgument, `update_mask.paths[0]: "target" cannot be updated`)
	req = jobsReq(1)
	req.Jobs[0].DisplayName = strings.Repeat("x", 300)
	_, err = e.jobs.CreateMigrationJobs(c, req)
	wantCode(t, err, codes.InvalidArgument, "jobs[0].display_name: at most 256 bytes")
}
