package api

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

type badInput struct {
	name   string
	call   func(context.Context, *env) error
	code   codes.Code
	prefix string // the message starts with it: the field path
}

func createJobs(edit func(*ferryv1.CreateMigrationJobsRequest)) func(context.Context, *env) error {
	return func(c context.Context, e *env) error {
		_, err := e.jobs.CreateMigrationJobs(c, jobsReqWith(edit))
		return err
	}
}

func createServer(edit func(*ferryv1.MigrationServer)) func(context.Context, *env) error {
	return func(c context.Context, e *env) error {
		_, err := e.servers.CreateMigrationServer(c, validServer(edit))
		return err
	}
}

func createNetwork(edit func(*ferryv1.L3Network)) func(context.Context, *env) error {
	return func(c context.Context, e *env) error {
		_, err := e.inv.CreateL3Network(c, validNetwork(edit))
		return err
	}
}

func createStorage(edit func(*ferryv1.PrimaryStorage)) func(context.Context, *env) error {
	return func(c context.Context, e *env) error {
		_, err := e.inv.CreatePrimaryStorage(c, validStorage(edit))
		return err
	}
}

func createSource(edit func(*ferryv1.Source)) func(context.Context, *env) error {
	return func(c context.Context, e *env) error {
		_, err := e.sources.CreateSource(c, validKVMSource(edit))
		return err
	}
}

func updateSettings(s *ferryv1.Settings, paths ...string) func(context.Context, *env) error {
	return func(c context.Context, e *env) error {
		_, err := e.settings.UpdateSettings(c, &ferryv1.UpdateSettingsRequest{Settings: s, UpdateMask: &fieldmaskpb.FieldMask{Paths: paths}})
		return err
	}
}

func target(edit func(*ferryv1.TargetVm)) func(*ferryv1.CreateMigrationJobsRequest) {
	return func(r *ferryv1.CreateMigrationJobsRequest) { edit(r.Jobs[0].Target) }
}

func nic(edit func(*ferryv1.TargetNic)) func(*ferryv1.CreateMigrationJobsRequest) {
	return func(r *ferryv1.CreateMigrationJobsRequest) { edit(r.Jobs[0].Target.Nics[0]) }
}

// issueBadInputs are the refusals issue 2 names, item 4.
var issueBadInputs = []badInput{
	{"more than 50 VMs", func(c context.Context, e *env) error {
		_, err := e.jobs.CreateMigrationJobs(c, jobsReq(51))
		return err
	}, codes.InvalidArgument, "jobs: at most 50"},
	{"bandwidth without unit", createServer(func(m *ferryv1.MigrationServer) { m.UpstreamBandwidth = "100" }),
		codes.InvalidArgument, "migration_server.upstream_bandwidth:"},
	{"bandwidth not integer", createServer(func(m *ferryv1.MigrationServer) { m.UpstreamBandwidth = "1.5Gbps" }),
		codes.InvalidArgument, "migration_server.upstream_bandwidth:"},
	{"bandwidth below 8Kbps", createServer(func(m *ferryv1.MigrationServer) { m.DownstreamBandwidth = "7Kbps" }),
		codes.InvalidArgument, "migration_server.downstream_bandwidth:"},
	{"bandwidth above 32Gbps", createServer(func(m *ferryv1.MigrationServer) { m.DownstreamBandwidth = "33Gbps" }),
		codes.InvalidArgument, "migration_server.downstream_bandwidth:"},
	{"set bandwidth bad", func(c context.Context, e *env) error {
		_, err := e.servers.SetMigrationServerBandwidth(c, &ferryv1.SetMigrationServerBandwidthRequest{
			Name: "migrationServers/kvm", UpstreamBandwidth: proto.String("10 Mbps")})
		return err
	}, codes.InvalidArgument, "upstream_bandwidth:"},
	{"malformed migration CIDR", createServer(func(m *ferryv1.MigrationServer) { m.MigrationCidr = "10.20.0.0/33" }),
		codes.InvalidArgument, "migration_server.migration_cidr:"},
	{"relative cache path", createServer(func(m *ferryv1.MigrationServer) { m.CachePath = "var/cache" }),
		codes.InvalidArgument, "migration_server.cache_path:"},
	{"host already a server of the other type", createServer(func(m *ferryv1.MigrationServer) {
		m.Host, m.Type = "hosts/kvm1", ferryv1.Platform_PLATFORM_VMWARE
	}), codes.FailedPrecondition, "migration_server.host: host hosts/kvm1 is already migration server migrationServers/kvm of type kvm"},
	{"server type differs from source type", createJobs(func(r *ferryv1.CreateMigrationJobsRequest) { r.Source = "sources/vc" }),
		codes.FailedPrecondition, "jobs: 2 pre-check(s) failed; nothing was created:\nmigration_server: migrationServers/kvm is a kvm migration server but source sources/vc is vmware"},
	{"target VM without NIC", createJobs(target(func(t *ferryv1.TargetVm) { t.Nics = nil })),
		codes.InvalidArgument, "jobs[0].target.nics: a target VM needs at least one NIC"},
	{"more than 3 CD-ROMs", createJobs(target(func(t *ferryv1.TargetVm) { t.CdromCount = 4 })),
		codes.InvalidArgument, "jobs[0].target.cdrom_count:"},
	{"delete a job that is not terminal", func(c context.Context, e *env) error {
		_, err := e.jobs.DeleteMigrationJob(c, &ferryv1.DeleteMigrationJobRequest{Name: "migrationJobs/queued"})
		return err
	}, codes.FailedPrecondition, "name: job migrationJobs/queued is MIGRATION_JOB_STATE_QUEUED; cancel it first"},
	{"restart a job that is not failed or cancelled", func(c context.Context, e *env) error {
		_, err := e.jobs.RestartMigrationJob(c, &ferryv1.RestartMigrationJobRequest{Name: "migrationJobs/queued"})
		return err
	}, codes.FailedPrecondition, "name: job migrationJobs/queued is MIGRATION_JOB_STATE_QUEUED; only FAILED or CANCELLED"},
	{"missing primary storage", createJobs(target(func(t *ferryv1.TargetVm) { t.PrimaryStorage = "primaryStorages/x" })),
		codes.NotFound, "jobs[0].target.primary_storage: primaryStorages/x not found"},
	{"missing source", createJobs(func(r *ferryv1.CreateMigrationJobsRequest) { r.Source = "sources/x" }),
		codes.NotFound, "source: sources/x not found"},
	{"missing migration server", createJobs(func(r *ferryv1.CreateMigrationJobsRequest) { r.MigrationServer = "migrationServers/x" }),
		codes.NotFound, "migration_server: migrationServers/x not found"},
	{"missing L3 network", createJobs(nic(func(n *ferryv1.TargetNic) { n.L3Network = "l3Networks/x" })),
		codes.NotFound, "jobs[0].target.nics[0].l3_network: l3Networks/x not found"},
	{"missing cluster", createJobs(target(func(t *ferryv1.TargetVm) { t.Cluster = "clusters/x" })),
		codes.NotFound, "jobs[0].target.cluster: clusters/x not found"},
	{"missing target host", createJobs(target(func(t *ferryv1.TargetVm) { t.Host = "hosts/x" })),
		codes.NotFound, "jobs[0].target.host: hosts/x not found"},
	{"missing credential", createSource(func(s *ferryv1.Source) { s.Kvm.Credential = "credentials/x" }),
		codes.NotFound, "source.kvm.credential: credentials/x not found"},
	{"missing host of a server", createServer(func(m *ferryv1.MigrationServer) { m.Host = "hosts/x" }),
		codes.NotFound, "migration_server.host: hosts/x not found"},
	{"missing cluster of storage", createStorage(func(p *ferryv1.PrimaryStorage) { p.Cluster = "clusters/x" }),
		codes.NotFound, "primary_storage.cluster: clusters/x not found"},
	{"missing cluster of network", createNetwork(func(n *ferryv1.L3Network) { n.Cluster = "clusters/x" }),
		codes.NotFound, "l3_network.cluster: clusters/x not found"},
	{"repeated request_id of another kind", func(c context.Context, e *env) error {
		_, err := e.jobs.CreateMigrationJobs(c, jobsReqWith(func(r *ferryv1.CreateMigrationJobsRequest) { r.RequestId = "cluster-req" }))
		return err
	}, codes.InvalidArgument, "request_id:"},
}

func TestIssueBadInputs(t *testing.T)   { runBadInputs(t, issueBadInputs) }
func TestOtherBadInputs(t *testing.T)   { runBadInputs(t, otherBadInputs) }
func TestJobSpecBadInputs(t *testing.T) { runBadInputs(t, jobSpecBadInputs) }

func runBadInputs(t *testing.T, cases []badInput) {
	e := newEnv(t, true)
	e.seed()
	runBadInputsOn(t, e, cases)
}

func runBadInputsOn(t *testing.T, e *env, cases []badInput) {
	c := ctx(t)
	e.queuedJob("migrationJobs/queued", "10.0.0.9")
	must[*ferryv1.Cluster](t)(e.inv.CreateCluster(c, &ferryv1.CreateClusterRequest{Cluster: &ferryv1.Cluster{}, RequestId: "cluster-req"}))
	before, applied := e.ledger.Snapshot(), e.raft.Stats().AppliedIndex
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call(c, e)
			wantCode(t, err, tc.code, tc.prefix)
			if tc.code == codes.InvalidArgument {
				checkBadRequest(t, err, tc.prefix)
			}
		})
	}
	checkOnlyAudited(t, "the API", before, e.ledger.Snapshot(), applied, e.raft.Stats().AppliedIndex)
}

// checkBadRequest wants the first field violation to name the field.
func checkBadRequest(t *testing.T, err error, prefix string) {
	t.Helper()
	field, _, _ := strings.Cut(prefix, ":")
	for _, d := range status.Convert(err).Details() {
		if br, ok := d.(*errdetails.BadRequest); ok && len(br.GetFieldViolations()) > 0 {
			if got := br.GetFieldViolations()[0].GetField(); got != field {
				t.Fatalf("BadRequest names %q, want %q", got, field)
			}
			return
		}
	}
	t.Fatalf("no BadRequest details in %v", err)
}

var otherBadInputs = []badInput{
	{"malformed name", func(c context.Context, e *env) error {
		_, err := e.inv.CreateCluster(c, &ferryv1.CreateClusterRequest{Cluster: &ferryv1.Cluster{Name: "clusters/Big_Name"}})
		return err
	}, codes.InvalidArgument, "cluster.name:"},
	{"name of another collection", func(c context.Context, e *env) error {
		_, err := e.inv.GetCluster(c, &ferryv1.GetClusterRequest{Name: "sources/kvm"})
		return err
	}, codes.InvalidArgument, "name:"},
	{"get missing", func(c context.Context, e *env) error {
		_, err := e.jobs.GetMigrationJob(c, &ferryv1.GetMigrationJobRequest{Name: "migrationJobs/nope"})
		return err
	}, codes.NotFound, "name: migration job migrationJobs/nope not found"},
	{"cluster exists", func(c context.Context, e *env) error {
		_, err := e.inv.CreateCluster(c, &ferryv1.CreateClusterRequest{Cluster: &ferryv1.Cluster{Name: "clusters/c1"}})
		return err
	}, codes.AlreadyExists, "cluster.name: clusters/c1 already exists"},
	{"delete cluster in use", func(c context.Context, e *env) error {
		_, err := e.inv.DeleteCluster(c, &ferryv1.DeleteClusterRequest{Name: "clusters/c1"})
		return err
	}, codes.FailedPrecondition, "name: cluster clusters/c1 still has primary storage"},
	{"negative page size", func(c context.Context, e *env) error {
		_, err := e.inv.ListClusters(c, &ferryv1.ListClustersRequest{PageSize: -1})
		return err
	}, codes.InvalidArgument, "page_size:"},
	{"bad page token", func(c context.Context, e *env) error {
		_, err := e.jobs.ListMigrationJobs(c, &ferryv1.ListMigrationJobsRequest{PageToken: "!!"})
		return err
	}, codes.InvalidArgument, "page_token:"},
	{"unknown state filter", func(c context.Context, e *env) error {
		_, err := e.jobs.ListMigrationJobs(c, &ferryv1.ListMigrationJobsRequest{State: 42})
		return err
	}, codes.InvalidArgument, "state:"},
	{"server type unspecified", createServer(func(m *ferryv1.MigrationServer) { m.Type = 0 }),
		codes.InvalidArgument, "migration_server.type:"},
	{"server without cache path", createServer(func(m *ferryv1.MigrationServer) { m.CachePath = "" }),
		codes.InvalidArgument, "migration_server.cache_path:"},
	{"server without host", createServer(func(m *ferryv1.MigrationServer) { m.Host = "" }),
		codes.InvalidArgument, "migration_server.host:"},
	{"set bandwidth with nothing", func(c context.Context, e *env) error {
		_, err := e.servers.SetMigrationServerBandwidth(c, &ferryv1.SetMigrationServerBandwidthRequest{Name: "migrationServers/kvm"})
		return err
	}, codes.InvalidArgument, "upstream_bandwidth:"},
	{"range start after end", createNetwork(func(n *ferryv1.L3Network) { n.IpRangeStart, n.IpRangeEnd = "192.168.1.60", "192.168.1.50" }),
		codes.InvalidArgument, "l3_network.ip_range_end:"},
	{"range start not an IP", createNetwork(func(n *ferryv1.L3Network) { n.IpRangeStart = "192.168.1" }),
		codes.InvalidArgument, "l3_network.ip_range_start:"},
	{"range outside subnet", createNetwork(func(n *ferryv1.L3Network) { n.IpRangeEnd = "192.168.2.5" }),
		codes.InvalidArgument, "l3_network.ip_range_end:"},
	{"gateway outside subnet", createNetwork(func(n *ferryv1.L3Network) { n.Gateway = "10.1.1.1" }),
		codes.InvalidArgument, "l3_network.gateway:"},
	{"prefix length missing", createNetwork(func(n *ferryv1.L3Network) { n.PrefixLength = 0 }),
		codes.InvalidArgument, "l3_network.prefix_length:"},
	{"libvirt network and bridge", createNetwork(func(n *ferryv1.L3Network) { n.Bridge = "br1" }),
		codes.InvalidArgument, "l3_network.libvirt_network: set exactly one"},
	{"neither libvirt network nor bridge", createNetwork(func(n *ferryv1.L3Network) { n.LibvirtNetwork = "" }),
		codes.InvalidArgument, "l3_network.libvirt_network: set exactly one"},
	{"bridge name too long", createNetwork(func(n *ferryv1.L3Network) { n.LibvirtNetwork, n.Bridge = "", "a-very-long-bridge-name" }),
		codes.InvalidArgument, "l3_network.bridge:"},
	{"storage type unspecified", createStorage(func(p *ferryv1.PrimaryStorage) { p.Type = 0 }),
		codes.InvalidArgument, "primary_storage.type:"},
	{"local storage relative path", createStorage(func(p *ferryv1.PrimaryStorage) {
		p.Type, p.Path = ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_LOCAL, "data"
	}), codes.InvalidArgument, "primary_storage.path:"},
	{"nfs storage without path", createStorage(func(p *ferryv1.PrimaryStorage) { p.Path = "" }),
		codes.InvalidArgument, "primary_storage.path:"},
	{"ceph without pool", createStorage(func(p *ferryv1.PrimaryStorage) {
		p.Type, p.Path = ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_CEPH, ""
	}), codes.InvalidArgument, "primary_storage.ceph_pool:"},
	{"ceph with a path", createStorage(func(p *ferryv1.PrimaryStorage) {
		p.Type, p.CephPool = ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_CEPH, "rbd"
	}), codes.InvalidArgument, "primary_storage.path:"},
	{"sharedblock without volume group", createStorage(func(p *ferryv1.PrimaryStorage) {
		p.Type, p.Path = ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_SHAREDBLOCK, ""
	}), codes.InvalidArgument, "primary_storage.volume_group:"},
	{"credential without secret", func(c context.Context, e *env) error {
		_, err := e.sources.CreateCredential(c, &ferryv1.CreateCredentialRequest{Credential: &ferryv1.Credential{
			Type: ferryv1.CredentialType_CREDENTIAL_TYPE_PASSWORD}})
		return err
	}, codes.InvalidArgument, "credential.secret:"},
	{"credential without type", func(c context.Context, e *env) error {
		_, err := e.sources.CreateCredential(c, &ferryv1.CreateCredentialRequest{Credential: &ferryv1.Credential{Secret: "x"}})
		return err
	}, codes.InvalidArgument, "credential.type:"},
	{"private key that is not one", func(c context.Context, e *env) error {
		_, err := e.sources.CreateCredential(c, &ferryv1.CreateCredentialRequest{Credential: &ferryv1.Credential{
			Type: ferryv1.CredentialType_CREDENTIAL_TYPE_PRIVATE_KEY, Secret: "not-a-key"}})
		return err
	}, codes.InvalidArgument, "credential.secret: not a private key"},
	{"source type unspecified", createSource(func(s *ferryv1.Source) { s.Type = 0 }),
		codes.InvalidArgument, "source.type:"},
	{"kvm source without connection", createSource(func(s *ferryv1.Source) { s.Kvm = nil }),
		codes.InvalidArgument, "source.kvm:"},
	{"kvm source without address", createSource(func(s *ferryv1.Source) { s.Kvm.Address = "" }),
		codes.InvalidArgument, "source.kvm.address:"},
	{"kvm source with a URL", createSource(func(s *ferryv1.Source) { s.Kvm.Address = "ssh://h:22" }),
		codes.InvalidArgument, "source.kvm.address:"},
	{"kvm source port out of range", createSource(func(s *ferryv1.Source) { s.Kvm.SshPort = 70000 }),
		codes.InvalidArgument, "source.kvm.ssh_port:"},
	{"kvm source without credential", createSource(func(s *ferryv1.Source) { s.Kvm.Credential = "" }),
		codes.InvalidArgument, "source.kvm.credential:"},
	{"sasl user without credential", createSource(func(s *ferryv1.Source) { s.Kvm.SaslUser = "virt" }),
		codes.InvalidArgument, "source.kvm.sasl_credential:"},
	{"bad host key", createSource(func(s *ferryv1.Source) { s.Kvm.HostKey = "ssh-ed25519 nope" }),
		codes.InvalidArgument, "source.kvm.host_key:"},
	{"vcenter without user", createSource(func(s *ferryv1.Source) {
		s.Type, s.Kvm, s.Vcenter = ferryv1.Platform_PLATFORM_VMWARE, nil, &ferryv1.VCenterConnection{Address: "vc", Credential: "credentials/pw"}
	}), codes.InvalidArgument, "source.vcenter.user:"},
	{"vcenter bad thumbprint", createSource(func(s *ferryv1.Source) {
		s.Type, s.Kvm = ferryv1.Platform_PLATFORM_VMWARE, nil
		s.Vcenter = &ferryv1.VCenterConnection{Address: "vc", User: "u", Credential: "credentials/pw", Thumbprint: "AB:CD"}
	}), codes.InvalidArgument, "source.vcenter.thumbprint:"},
	{"vcenter thumbprint of 31 bytes", createSource(vcenterSource(func(v *ferryv1.VCenterConnection) {
		v.Thumbprint = strings.Repeat("ab", 31)
	})), codes.InvalidArgument, "source.vcenter.thumbprint: \"" + strings.Repeat("ab", 31) + "\" is neither a SHA-1"},
	{"vcenter thumbprint not hex", createSource(vcenterSource(func(v *ferryv1.VCenterConnection) {
		v.Thumbprint = strings.Repeat("zz", 20)
	})), codes.InvalidArgument, "source.vcenter.thumbprint:"},
	{"vcenter CA and thumbprint", createSource(vcenterSource(func(v *ferryv1.VCenterConnection) {
		v.CaCertificate, v.Thumbprint = testCAPEM, strings.Repeat("ab", 20)
	})), codes.InvalidArgument, "source.vcenter.thumbprint: give ca_certificate or thumbprint, not both"},
	{"vcenter CA not PEM", createSource(vcenterSource(func(v *ferryv1.VCenterConnection) { v.CaCertificate = "trust me" })),
		codes.InvalidArgument, "source.vcenter.ca_certificate: not a PEM CERTIFICATE bundle"},
	{"vcenter CA bundle with a key", createSource(vcenterSource(func(v *ferryv1.VCenterConnection) {
		v.CaCertificate = testCAPEM + "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
	})), codes.InvalidArgument, "source.vcenter.ca_certificate: block 2 is a PRIVATE KEY, not a CERTIFICATE"},
	{"vcenter CA block not a certificate", createSource(vcenterSource(func(v *ferryv1.VCenterConnection) {
		v.CaCertificate = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
	})), codes.InvalidArgument, "source.vcenter.ca_certificate: certificate 1:"},
	{"vcenter skip_hostname_check over HTTP", createSource(vcenterSource(func(v *ferryv1.VCenterConnection) {
		v.UseHttp, v.SkipHostnameCheck = true, true
	})), codes.InvalidArgument, "source.vcenter.skip_hostname_check: a TLS setting given with use_http"},
	{"vcenter thumbprint over HTTP", createSource(vcenterSource(func(v *ferryv1.VCenterConnection) {
		v.UseHttp, v.Thumbprint = true, strings.Repeat("ab", 20)
	})), codes.InvalidArgument, "source.vcenter.thumbprint: a TLS setting given with use_http"},
	{"parallelism zero", updateSettings(&ferryv1.Settings{}, "job_parallelism"),
		codes.InvalidArgument, "settings.job_parallelism:"},
	{"parallelism too high", updateSettings(&ferryv1.Settings{JobParallelism: 1001}),
		codes.InvalidArgument, "settings.job_parallelism:"},
	{"negative retention", updateSettings(&ferryv1.Settings{CacheRetention: durationpb.New(-1)}, "cache_retention"),
		codes.InvalidArgument, "settings.cache_retention:"},
	{"zero guest shutdown timeout", updateSettings(&ferryv1.Settings{GuestShutdownTimeout: durationpb.New(0)}, "guest_shutdown_timeout"),
		codes.InvalidArgument, "settings.guest_shutdown_timeout: must be positive"},
	{"guest shutdown timeout under a second", updateSettings(&ferryv1.Settings{GuestShutdownTimeout: durationpb.New(500 * time.Millisecond)}),
		codes.InvalidArgument, "settings.guest_shutdown_timeout: must be 1s to 24h0m0s, got 500ms"},
	{"guest shutdown timeout over a day", updateSettings(&ferryv1.Settings{GuestShutdownTimeout: durationpb.New(25 * time.Hour)}),
		codes.InvalidArgument, "settings.guest_shutdown_timeout: must be 1s to 24h0m0s"},
	{"guest shutdown timeout missing", updateSettings(&ferryv1.Settings{}, "guest_shutdown_timeout"),
		codes.InvalidArgument, "settings.guest_shutdown_timeout: required"},
	{"zero grace period", updateSettings(&ferryv1.Settings{AgentGracePeriod: durationpb.New(0)}, "agent_grace_period"),
		codes.InvalidArgument, "settings.agent_grace_period:"},
	{"strategy unspecified", updateSettings(&ferryv1.Settings{}, "host_allocation_strategy"),
		codes.InvalidArgument, "settings.host_allocation_strategy:"},
	{"unknown mask path", updateSettings(&ferryv1.Settings{JobParallelism: 5}, "job_parallelism", "parallelism"),
		codes.InvalidArgument, "update_mask.paths[1]: unknown field \"parallelism\""},
	{"empty update", updateSettings(&ferryv1.Settings{}),
		codes.InvalidArgument, "update_mask:"},
	{"add voter without raft address", func(c context.Context, e *env) error {
		_, err := e.cluster.AddVoter(c, &ferryv1.AddVoterRequest{Id: "node-b", ApiAddress: "127.0.0.1:7443"})
		return err
	}, codes.InvalidArgument, "raft_address:"},
	{"add voter bad id", func(c context.Context, e *env) error {
		_, err := e.cluster.AddVoter(c, &ferryv1.AddVoterRequest{Id: "a b", RaftAddress: "h:1", ApiAddress: "h:2"})
		return err
	}, codes.InvalidArgument, "id:"},
	{"watch bad name", func(c context.Context, e *env) error {
		s, err := e.jobs.WatchMigrationJobs(c, &ferryv1.WatchMigrationJobsRequest{Names: []string{"jobs/1"}})
		if err == nil {
			_, err = s.Recv()
		}
		return err
	}, codes.InvalidArgument, "names[0]:"},
}

var jobSpecBadInputs = []badInput{
	{"no VMs", createJobs(func(r *ferryv1.CreateMigrationJobsRequest) { r.Jobs = nil }),
		codes.InvalidArgument, "jobs: at least one"},
	{"no source", createJobs(func(r *ferryv1.CreateMigrationJobsRequest) { r.Source = "" }),
		codes.InvalidArgument, "source: required"},
	{"malformed server", createJobs(func(r *ferryv1.CreateMigrationJobsRequest) { r.MigrationServer = "servers/kvm" }),
		codes.InvalidArgument, "migration_server:"},
	{"no source VM", createJobs(func(r *ferryv1.CreateMigrationJobsRequest) { r.Jobs[0].SourceVm = "" }),
		codes.InvalidArgument, "jobs[0].source_vm:"},
	{"same VM twice", func(c context.Context, e *env) error {
		req := jobsReq(2)
		req.Jobs[1].SourceVm = req.Jobs[0].SourceVm
		_, err := e.jobs.CreateMigrationJobs(c, req)
		return err
	}, codes.InvalidArgument, "jobs[1].source_vm:"},
	{"no target", createJobs(func(r *ferryv1.CreateMigrationJobsRequest) { r.Jobs[0].Target = nil }),
		codes.InvalidArgument, "jobs[0].target:"},
	{"no VM name", createJobs(target(func(t *ferryv1.TargetVm) { t.VmName = "" })),
		codes.InvalidArgument, "jobs[0].target.vm_name:"},
	{"zero vCPUs", createJobs(target(func(t *ferryv1.TargetVm) { t.Cpus = 0 })),
		codes.InvalidArgument, "jobs[0].target.cpus:"},
	{"zero memory", createJobs(target(func(t *ferryv1.TargetVm) { t.MemoryBytes = 0 })),
		codes.InvalidArgument, "jobs[0].target.memory_bytes:"},
	{"no disks", createJobs(target(func(t *ferryv1.TargetVm) { t.Disks = nil })),
		codes.InvalidArgument, "jobs[0].target.disks:"},
	{"disk of size zero", createJobs(target(func(t *ferryv1.TargetVm) { t.Disks[0].SizeBytes = 0 })),
		codes.InvalidArgument, "jobs[0].target.disks[0].size_bytes:"},
	{"negative CD-ROMs", createJobs(target(func(t *ferryv1.TargetVm) { t.CdromCount = -1 })),
		codes.InvalidArgument, "jobs[0].target.cdrom_count:"},
	{"unknown firmware", createJobs(target(func(t *ferryv1.TargetVm) { t.Firmware = 9 })),
		codes.InvalidArgument, "jobs[0].target.firmware:"},
	{"unknown compression", createJobs(func(r *ferryv1.CreateMigrationJobsRequest) {
		r.Jobs[0].Options = &ferryv1.MigrationOptions{Compression: 7}
	}), codes.InvalidArgument, "jobs[0].options.compression:"},
	{"no MAC at all", createJobs(nic(func(n *ferryv1.TargetNic) { n.SourceMac = "" })),
		codes.InvalidArgument, "jobs[0].target.nics[0].mac: required when source_mac is empty"},
	{"malformed MAC", createJobs(nic(func(n *ferryv1.TargetNic) { n.Mac = "52:54:00:zz:00:01" })),
		codes.InvalidArgument, "jobs[0].target.nics[0].mac:"},
	{"multicast MAC", createJobs(nic(func(n *ferryv1.TargetNic) { n.Mac = "01:00:5e:00:00:01" })),
		codes.InvalidArgument, "jobs[0].target.nics[0].mac:"},
	{"malformed source MAC", createJobs(nic(func(n *ferryv1.TargetNic) { n.SourceMac = "5254.0000.0001.02" })),
		codes.InvalidArgument, "jobs[0].target.nics[0].source_mac:"},
	{"no network", createJobs(nic(func(n *ferryv1.TargetNic) { n.L3Network = "" })),
		codes.InvalidArgument, "jobs[0].target.nics[0].l3_network:"},
	{"IP not an address", createJobs(nic(func(n *ferryv1.TargetNic) { n.Ip = "10.0.0.300" })),
		codes.InvalidArgument, "jobs[0].target.nics[0].ip:"},
	{"IP outside the range", createJobs(nic(func(n *ferryv1.TargetNic) { n.Ip = "10.0.0.21" })),
		codes.InvalidArgument, "jobs[0].target.nics[0].ip: 10.0.0.21 is outside the range 10.0.0.1-10.0.0.20"},
	{"IP is the gateway", createJobs(nic(func(n *ferryv1.TargetNic) { n.Ip = "10.0.0.1" })),
		codes.InvalidArgument, "jobs[0].target.nics[0].ip:"},
	{"IP held by another job", createJobs(nic(func(n *ferryv1.TargetNic) { n.Ip = "10.0.0.9" })),
		codes.FailedPrecondition, "jobs[0].target.nics[0].ip: 10.0.0.9 on l3Networks/net1 is already held by migrationJobs/queued"},
	{"same IP twice in a batch", func(c context.Context, e *env) error {
		req := jobsReq(2)
		req.Jobs[0].Target.Nics[0].Ip = "10.0.0.5"
		req.Jobs[1].Target.Nics[0].Ip = "10.0.0.5"
		_, err := e.jobs.CreateMigrationJobs(c, req)
		return err
	}, codes.InvalidArgument, "jobs[1].target.nics[0].ip:"},
	{"a disconnected target host", createJobs(target(func(t *ferryv1.TargetVm) {
		t.PrimaryStorage, t.Host = "primaryStorages/local", "hosts/spare"
	})), codes.FailedPrecondition, "jobs[0].target.host: host hosts/spare cannot take the VM: disconnected"},
	{"second VM bad, first fine", func(c context.Context, e *env) error {
		req := jobsReq(3)
		req.Jobs[2].Target.Nics = nil
		_, err := e.jobs.CreateMigrationJobs(c, req)
		return err
	}, codes.InvalidArgument, "jobs[2].target.nics: a target VM needs at least one NIC"},
}

// vcenterSource is a valid vCenter source changed by change.
func vcenterSource(change func(*ferryv1.VCenterConnection)) func(*ferryv1.Source) {
	return func(s *ferryv1.Source) {
		s.Type, s.Kvm = ferryv1.Platform_PLATFORM_VMWARE, nil
		s.Vcenter = &ferryv1.VCenterConnection{Address: "vc.example.com", User: "administrator@vsphere.local", Credential: "credentials/pw"}
		change(s.Vcenter)
	}
}

// testCAPEM is a self-signed CA certificate in PEM.
var testCAPEM = func() string {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ferry test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}()
