package api_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/pem"
	"fmt"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferry-v2v/ferry/coordinator/internal/api"
	"github.com/ferry-v2v/ferry/coordinator/internal/testcluster"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// The bad-input corpus runs against a real three-node cluster (Raft,
// mutual TLS, forwarding): each request goes once to the leader and once
// to a follower, must get the right code and a message (and BadRequest
// details) naming the field, and must leave every node's ledger and
// applied index as they were.

// apiClients are the six ferry.v1 clients over one connection.
type apiClients struct {
	conn     *grpc.ClientConn
	inv      ferryv1.TargetInventoryServiceClient
	servers  ferryv1.MigrationServerServiceClient
	sources  ferryv1.SourceServiceClient
	jobs     ferryv1.MigrationJobServiceClient
	settings ferryv1.SettingsServiceClient
	cluster  ferryv1.MembershipServiceClient
}

func newClients(conn *grpc.ClientConn) *apiClients {
	return &apiClients{conn: conn,
		inv: ferryv1.NewTargetInventoryServiceClient(conn), servers: ferryv1.NewMigrationServerServiceClient(conn),
		sources: ferryv1.NewSourceServiceClient(conn), jobs: ferryv1.NewMigrationJobServiceClient(conn),
		settings: ferryv1.NewSettingsServiceClient(conn), cluster: ferryv1.NewMembershipServiceClient(conn)}
}

type corpusCase struct {
	name   string
	call   func(context.Context, *apiClients) error
	code   codes.Code
	prefix string // the message starts with it: "field: ..."
}

const gib = int64(1) << 30

// badUTF8 stands in a valid message for bytes that are not UTF-8: the
// raw call swaps them in after marshalling (same length, so no length
// prefix changes).
const badUTF8 = "BADUTF8!"

var notUTF8 = []byte("\xff\xfeBAD\xc3\x28!")

// rawCodec sends pre-encoded bytes and ignores the answer's body.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error)   { return v.([]byte), nil }
func (rawCodec) Unmarshal(b []byte, v any) error { *(v.(*[]byte)) = b; return nil }
func (rawCodec) Name() string                    { return "proto" }

var _ encoding.Codec = rawCodec{}

// rawCall sends msg with badUTF8 replaced by bytes that are not UTF-8,
// which a generated client refuses to encode.
func rawCall(method string, msg proto.Message) func(context.Context, *apiClients) error {
	return func(ctx context.Context, c *apiClients) error {
		b, err := proto.Marshal(msg)
		if err != nil {
			return err
		}
		if !bytes.Contains(b, []byte(badUTF8)) {
			return fmt.Errorf("test bug: %s holds no %q", method, badUTF8)
		}
		b = bytes.ReplaceAll(b, []byte(badUTF8), notUTF8)
		var out []byte
		return c.conn.Invoke(ctx, method, b, &out, grpc.ForceCodec(rawCodec{}))
	}
}

func seedSpec(i int) *ferryv1.MigrationJobSpec {
	return &ferryv1.MigrationJobSpec{
		SourceVm: fmt.Sprintf("vm-%d", i),
		Target: &ferryv1.TargetVm{
			VmName: fmt.Sprintf("target-%d", i), Cluster: "clusters/c1", PrimaryStorage: "primaryStorages/nfs",
			Cpus: 2, MemoryBytes: 2 * gib, CdromCount: 1,
			Disks: []*ferryv1.TargetDisk{{SourceDisk: "vda", SizeBytes: 10 * gib}},
			Nics:  []*ferryv1.TargetNic{{SourceMac: fmt.Sprintf("52:54:00:00:%02x:%02x", i/256, i%256), L3Network: "l3Networks/net1"}},
		},
	}
}

func batch(n int) *ferryv1.CreateMigrationJobsRequest {
	req := &ferryv1.CreateMigrationJobsRequest{Source: "sources/kvm", MigrationServer: "migrationServers/kvm"}
	for i := range n {
		req.Jobs = append(req.Jobs, seedSpec(i))
	}
	return req
}

// jobs sends a batch of n VMs changed by edit.
func jobs(n int, edit func(*ferryv1.CreateMigrationJobsRequest)) func(context.Context, *apiClients) error {
	return func(ctx context.Context, c *apiClients) error {
		req := batch(n)
		edit(req)
		_, err := c.jobs.CreateMigrationJobs(ctx, req)
		return err
	}
}

// vm edits jobs[i].target of a batch.
func vm(i int, edit func(*ferryv1.TargetVm)) func(*ferryv1.CreateMigrationJobsRequest) {
	return func(r *ferryv1.CreateMigrationJobsRequest) { edit(r.Jobs[i].Target) }
}

func server(edit func(*ferryv1.MigrationServer)) func(context.Context, *apiClients) error {
	return func(ctx context.Context, c *apiClients) error {
		ms := &ferryv1.MigrationServer{Host: "hosts/spare", Type: ferryv1.Platform_PLATFORM_KVM, CachePath: "/srv/cache"}
		edit(ms)
		_, err := c.servers.CreateMigrationServer(ctx, &ferryv1.CreateMigrationServerRequest{MigrationServer: ms})
		return err
	}
}

func network(edit func(*ferryv1.L3Network)) func(context.Context, *apiClients) error {
	return func(ctx context.Context, c *apiClients) error {
		n := &ferryv1.L3Network{Cluster: "clusters/c1", LibvirtNetwork: "default",
			IpRangeStart: "192.168.1.10", IpRangeEnd: "192.168.1.50", Gateway: "192.168.1.1", PrefixLength: 24}
		edit(n)
		_, err := c.inv.CreateL3Network(ctx, &ferryv1.CreateL3NetworkRequest{L3Network: n})
		return err
	}
}

func storage(edit func(*ferryv1.PrimaryStorage)) func(context.Context, *apiClients) error {
	return func(ctx context.Context, c *apiClients) error {
		ps := &ferryv1.PrimaryStorage{Cluster: "clusters/c1", Type: ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_NFS, Path: "/mnt/other"}
		edit(ps)
		_, err := c.inv.CreatePrimaryStorage(ctx, &ferryv1.CreatePrimaryStorageRequest{PrimaryStorage: ps})
		return err
	}
}

func kvmSource(edit func(*ferryv1.Source)) func(context.Context, *apiClients) error {
	return func(ctx context.Context, c *apiClients) error {
		s := &ferryv1.Source{Type: ferryv1.Platform_PLATFORM_KVM, Kvm: &ferryv1.KvmConnection{Address: "kvm.example.com", Credential: "credentials/pw"}}
		edit(s)
		_, err := c.sources.CreateSource(ctx, &ferryv1.CreateSourceRequest{Source: s})
		return err
	}
}

func credential(typ ferryv1.CredentialType, secret string, edit func(*ferryv1.Credential)) func(context.Context, *apiClients) error {
	return func(ctx context.Context, c *apiClients) error {
		cr := &ferryv1.Credential{Type: typ, Secret: secret}
		edit(cr)
		_, err := c.sources.CreateCredential(ctx, &ferryv1.CreateCredentialRequest{Credential: cr})
		return err
	}
}

func settingsMask(s *ferryv1.Settings, paths ...string) func(context.Context, *apiClients) error {
	return func(ctx context.Context, c *apiClients) error {
		_, err := c.settings.UpdateSettings(ctx, &ferryv1.UpdateSettingsRequest{Settings: s, UpdateMask: &fieldmaskpb.FieldMask{Paths: paths}})
		return err
	}
}

func unary[Req, Resp any](call func(*apiClients) func(context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) func(context.Context, *apiClients) error {
	return func(ctx context.Context, c *apiClients) error {
		_, err := call(c)(ctx, req)
		return err
	}
}

func watch(req *ferryv1.WatchMigrationJobsRequest) func(context.Context, *apiClients) error {
	return func(ctx context.Context, c *apiClients) error {
		s, err := c.jobs.WatchMigrationJobs(ctx, req)
		if err == nil {
			_, err = s.Recv()
		}
		return err
	}
}

func none[T any](T) {}

var (
	long300  = strings.Repeat("x", 300)
	long100k = strings.Repeat("y", 100<<10)
	ipa      = codes.InvalidArgument
)

// corpus is the bad-input corpus: every service, every kind of mistake.
var corpus = []corpusCase{
	// TargetInventoryService: clusters.
	{"cluster name upper case", unary(func(c *apiClients) func(context.Context, *ferryv1.CreateClusterRequest, ...grpc.CallOption) (*ferryv1.Cluster, error) {
		return c.inv.CreateCluster
	}, &ferryv1.CreateClusterRequest{Cluster: &ferryv1.Cluster{Name: "clusters/Big_Name"}}), ipa, "cluster.name:"},
	{"cluster name of another collection", unary(func(c *apiClients) func(context.Context, *ferryv1.CreateClusterRequest, ...grpc.CallOption) (*ferryv1.Cluster, error) {
		return c.inv.CreateCluster
	}, &ferryv1.CreateClusterRequest{Cluster: &ferryv1.Cluster{Name: "sources/c2"}}), ipa, "cluster.name:"},
	{"cluster missing", unary(func(c *apiClients) func(context.Context, *ferryv1.CreateClusterRequest, ...grpc.CallOption) (*ferryv1.Cluster, error) {
		return c.inv.CreateCluster
	}, &ferryv1.CreateClusterRequest{}), ipa, "cluster:"},
	{"cluster display name too long", unary(func(c *apiClients) func(context.Context, *ferryv1.CreateClusterRequest, ...grpc.CallOption) (*ferryv1.Cluster, error) {
		return c.inv.CreateCluster
	}, &ferryv1.CreateClusterRequest{Cluster: &ferryv1.Cluster{DisplayName: long300}}), ipa, "cluster.display_name:"},
	{"cluster zone with a control character", unary(func(c *apiClients) func(context.Context, *ferryv1.CreateClusterRequest, ...grpc.CallOption) (*ferryv1.Cluster, error) {
		return c.inv.CreateCluster
	}, &ferryv1.CreateClusterRequest{Cluster: &ferryv1.Cluster{Zone: "east\x1b[2J"}}), ipa, "cluster.zone:"},
	{"cluster display name not UTF-8", rawCall("/ferry.v1.TargetInventoryService/CreateCluster",
		&ferryv1.CreateClusterRequest{Cluster: &ferryv1.Cluster{DisplayName: badUTF8}}), ipa, "cluster.display_name: not valid UTF-8"},
	{"cluster duplicated name", unary(func(c *apiClients) func(context.Context, *ferryv1.CreateClusterRequest, ...grpc.CallOption) (*ferryv1.Cluster, error) {
		return c.inv.CreateCluster
	}, &ferryv1.CreateClusterRequest{Cluster: &ferryv1.Cluster{Name: "clusters/c1"}}), codes.AlreadyExists, "cluster.name: clusters/c1 already exists"},
	{"cluster request_id too long", unary(func(c *apiClients) func(context.Context, *ferryv1.CreateClusterRequest, ...grpc.CallOption) (*ferryv1.Cluster, error) {
		return c.inv.CreateCluster
	}, &ferryv1.CreateClusterRequest{Cluster: &ferryv1.Cluster{}, RequestId: long300}), ipa, "request_id:"},
	{"get cluster of another collection", unary(func(c *apiClients) func(context.Context, *ferryv1.GetClusterRequest, ...grpc.CallOption) (*ferryv1.Cluster, error) {
		return c.inv.GetCluster
	}, &ferryv1.GetClusterRequest{Name: "sources/kvm"}), ipa, "name:"},
	{"get missing cluster", unary(func(c *apiClients) func(context.Context, *ferryv1.GetClusterRequest, ...grpc.CallOption) (*ferryv1.Cluster, error) {
		return c.inv.GetCluster
	}, &ferryv1.GetClusterRequest{Name: "clusters/nope"}), codes.NotFound, "name: cluster clusters/nope not found"},
	{"delete cluster in use", unary(func(c *apiClients) func(context.Context, *ferryv1.DeleteClusterRequest, ...grpc.CallOption) (*emptypb.Empty, error) {
		return c.inv.DeleteCluster
	}, &ferryv1.DeleteClusterRequest{Name: "clusters/c1"}), codes.FailedPrecondition, "name: cluster clusters/c1 still has primary storage"},
	{"list clusters negative page size", unary(func(c *apiClients) func(context.Context, *ferryv1.ListClustersRequest, ...grpc.CallOption) (*ferryv1.ListClustersResponse, error) {
		return c.inv.ListClusters
	}, &ferryv1.ListClustersRequest{PageSize: -5}), ipa, "page_size:"},
	{"list clusters bad page token", unary(func(c *apiClients) func(context.Context, *ferryv1.ListClustersRequest, ...grpc.CallOption) (*ferryv1.ListClustersResponse, error) {
		return c.inv.ListClusters
	}, &ferryv1.ListClustersRequest{PageToken: "%%%not-base64"}), ipa, "page_token:"},
	{"list hosts bad cluster filter", unary(func(c *apiClients) func(context.Context, *ferryv1.ListHostsRequest, ...grpc.CallOption) (*ferryv1.ListHostsResponse, error) {
		return c.inv.ListHosts
	}, &ferryv1.ListHostsRequest{Cluster: "zones/east"}), ipa, "cluster:"},
	{"get host with a space", unary(func(c *apiClients) func(context.Context, *ferryv1.GetHostRequest, ...grpc.CallOption) (*ferryv1.Host, error) {
		return c.inv.GetHost
	}, &ferryv1.GetHostRequest{Name: "hosts/a b"}), ipa, "name:"},

	// TargetInventoryService: primary storage and networks.
	{"storage type unknown", storage(func(p *ferryv1.PrimaryStorage) { p.Type = 99 }), ipa, "primary_storage.type:"},
	{"storage relative path", storage(func(p *ferryv1.PrimaryStorage) { p.Path = "mnt/x" }), ipa, "primary_storage.path:"},
	{"storage path not clean", storage(func(p *ferryv1.PrimaryStorage) { p.Path = "/mnt/../etc" }), ipa, "primary_storage.path:"},
	{"storage path very long", storage(func(p *ferryv1.PrimaryStorage) { p.Path = "/" + strings.Repeat("d/", 3000) + "x" }), ipa, "primary_storage.path:"},
	{"storage path with a newline", storage(func(p *ferryv1.PrimaryStorage) { p.Path = "/mnt/a\nb" }), ipa, "primary_storage.path:"},
	{"ceph without pool", storage(func(p *ferryv1.PrimaryStorage) {
		p.Type, p.Path = ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_CEPH, ""
	}), ipa, "primary_storage.ceph_pool:"},
	{"storage in a missing cluster", storage(func(p *ferryv1.PrimaryStorage) { p.Cluster = "clusters/x" }),
		codes.NotFound, "primary_storage.cluster: clusters/x not found"},
	{"storage duplicated name", storage(func(p *ferryv1.PrimaryStorage) { p.Name = "primaryStorages/nfs" }),
		codes.AlreadyExists, "primary_storage.name: primaryStorages/nfs already exists"},
	{"network range reversed", network(func(n *ferryv1.L3Network) { n.IpRangeStart, n.IpRangeEnd = "192.168.1.60", "192.168.1.50" }),
		ipa, "l3_network.ip_range_end:"},
	{"network start not an IP", network(func(n *ferryv1.L3Network) { n.IpRangeStart = "192.168.1.256" }), ipa, "l3_network.ip_range_start:"},
	{"network prefix length 33", network(func(n *ferryv1.L3Network) { n.PrefixLength = 33 }), ipa, "l3_network.prefix_length:"},
	{"network gateway of the other family", network(func(n *ferryv1.L3Network) { n.Gateway = "fd00::1" }), ipa, "l3_network.gateway:"},
	{"network bridge name too long", network(func(n *ferryv1.L3Network) { n.LibvirtNetwork, n.Bridge = "", "br-much-too-long" }),
		ipa, "l3_network.bridge:"},
	{"network duplicated name", network(func(n *ferryv1.L3Network) { n.Name = "l3Networks/net1" }),
		codes.AlreadyExists, "l3_network.name: l3Networks/net1 already exists"},

	// SourceService.
	{"credential type unknown", credential(7, "pw", none), ipa, "credential.type:"},
	{"credential without secret", credential(ferryv1.CredentialType_CREDENTIAL_TYPE_PASSWORD, "", none), ipa, "credential.secret:"},
	{"credential secret oversized", credential(ferryv1.CredentialType_CREDENTIAL_TYPE_PASSWORD, long100k, none), ipa, "credential.secret: at most"},
	{"private key that is not one", credential(ferryv1.CredentialType_CREDENTIAL_TYPE_PRIVATE_KEY, "-----BEGIN nothing", none),
		ipa, "credential.secret: not a private key"},
	{"credential duplicated name", credential(ferryv1.CredentialType_CREDENTIAL_TYPE_PASSWORD, "pw2", func(c *ferryv1.Credential) { c.Name = "credentials/pw" }),
		codes.AlreadyExists, "credential.name: credentials/pw already exists"},
	{"credential display name not UTF-8", rawCall("/ferry.v1.SourceService/CreateCredential", &ferryv1.CreateCredentialRequest{
		Credential: &ferryv1.Credential{Type: ferryv1.CredentialType_CREDENTIAL_TYPE_PASSWORD, Secret: "pw", DisplayName: badUTF8}}),
		ipa, "credential.display_name: not valid UTF-8"},
	{"source type unknown", kvmSource(func(s *ferryv1.Source) { s.Type = 9 }), ipa, "source.type:"},
	{"source with both connections", kvmSource(func(s *ferryv1.Source) {
		s.Vcenter = &ferryv1.VCenterConnection{Address: "vc", User: "u", Credential: "credentials/pw"}
	}), ipa, "source.vcenter:"},
	{"source address is a URL", kvmSource(func(s *ferryv1.Source) { s.Kvm.Address = "ssh://h:22" }), ipa, "source.kvm.address:"},
	{"source address with a port", kvmSource(func(s *ferryv1.Source) { s.Kvm.Address = "kvm.example.com:22" }), ipa, "source.kvm.address:"},
	{"source SSH port out of range", kvmSource(func(s *ferryv1.Source) { s.Kvm.SshPort = 65536 }), ipa, "source.kvm.ssh_port:"},
	{"source user very long", kvmSource(func(s *ferryv1.Source) { s.Kvm.User = long300 }), ipa, "source.kvm.user:"},
	{"source credential of another collection", kvmSource(func(s *ferryv1.Source) { s.Kvm.Credential = "secrets/pw" }),
		ipa, "source.kvm.credential:"},
	{"source missing credential", kvmSource(func(s *ferryv1.Source) { s.Kvm.Credential = "credentials/x" }),
		codes.NotFound, "source.kvm.credential: credentials/x not found"},
	{"source SASL password is a key", kvmSource(func(s *ferryv1.Source) { s.Kvm.SaslUser, s.Kvm.SaslCredential = "virt", "credentials/key" }),
		ipa, "source.kvm.sasl_credential:"},
	{"source host key malformed", kvmSource(func(s *ferryv1.Source) { s.Kvm.HostKey = "ssh-ed25519 AAAA!!" }), ipa, "source.kvm.host_key:"},
	{"source user not UTF-8", rawCall("/ferry.v1.SourceService/CreateSource", &ferryv1.CreateSourceRequest{Source: &ferryv1.Source{
		Type: ferryv1.Platform_PLATFORM_KVM, Kvm: &ferryv1.KvmConnection{Address: "kvm.example.com", Credential: "credentials/pw", User: badUTF8}}}),
		ipa, "source.kvm.user: not valid UTF-8"},
	{"vcenter CA not PEM", kvmSource(func(s *ferryv1.Source) {
		s.Type, s.Kvm = ferryv1.Platform_PLATFORM_VMWARE, nil
		s.Vcenter = &ferryv1.VCenterConnection{Address: "vc", User: "u", Credential: "credentials/pw", CaCertificate: "not pem"}
	}), ipa, "source.vcenter.ca_certificate:"},
	{"vcenter port negative", kvmSource(func(s *ferryv1.Source) {
		s.Type, s.Kvm = ferryv1.Platform_PLATFORM_VMWARE, nil
		s.Vcenter = &ferryv1.VCenterConnection{Address: "vc", User: "u", Credential: "credentials/pw", Port: -1}
	}), ipa, "source.vcenter.port:"},
	{"source duplicated name", kvmSource(func(s *ferryv1.Source) { s.Name = "sources/kvm" }),
		codes.AlreadyExists, "source.name: sources/kvm already exists"},
	{"list sources unknown type", unary(func(c *apiClients) func(context.Context, *ferryv1.ListSourcesRequest, ...grpc.CallOption) (*ferryv1.ListSourcesResponse, error) {
		return c.sources.ListSources
	}, &ferryv1.ListSourcesRequest{Type: 12}), ipa, "type:"},
	{"delete credential in use", unary(func(c *apiClients) func(context.Context, *ferryv1.DeleteCredentialRequest, ...grpc.CallOption) (*emptypb.Empty, error) {
		return c.sources.DeleteCredential
	}, &ferryv1.DeleteCredentialRequest{Name: "credentials/pw"}), codes.FailedPrecondition, "name: source sources/kvm still uses credential credentials/pw"},
	{"list VMs of a missing source", unary(func(c *apiClients) func(context.Context, *ferryv1.ListSourceVMsRequest, ...grpc.CallOption) (*ferryv1.ListSourceVMsResponse, error) {
		return c.sources.ListSourceVMs
	}, &ferryv1.ListSourceVMsRequest{Source: "sources/x", MigrationServer: "migrationServers/kvm"}), codes.NotFound, "source: sources/x not found"},

	// MigrationServerService.
	{"server type unknown", server(func(m *ferryv1.MigrationServer) { m.Type = 5 }), ipa, "migration_server.type:"},
	{"server cache path relative", server(func(m *ferryv1.MigrationServer) { m.CachePath = "cache" }), ipa, "migration_server.cache_path:"},
	{"server CIDR /33", server(func(m *ferryv1.MigrationServer) { m.MigrationCidr = "10.0.0.0/33" }), ipa, "migration_server.migration_cidr:"},
	{"server bandwidth above 32Gbps", server(func(m *ferryv1.MigrationServer) { m.UpstreamBandwidth = "40Gbps" }), ipa, "migration_server.upstream_bandwidth:"},
	{"server bandwidth without unit", server(func(m *ferryv1.MigrationServer) { m.DownstreamBandwidth = "1000" }), ipa, "migration_server.downstream_bandwidth:"},
	{"server on a missing host", server(func(m *ferryv1.MigrationServer) { m.Host = "hosts/ghost" }), codes.NotFound, "migration_server.host: hosts/ghost not found"},
	{"server on a host that has one", server(func(m *ferryv1.MigrationServer) { m.Host = "hosts/kvm1" }), codes.FailedPrecondition, "migration_server.host:"},
	{"server duplicated name", server(func(m *ferryv1.MigrationServer) { m.Name = "migrationServers/kvm" }),
		codes.AlreadyExists, "migration_server.name: migrationServers/kvm already exists"},
	{"set bandwidth with nothing", unary(func(c *apiClients) func(context.Context, *ferryv1.SetMigrationServerBandwidthRequest, ...grpc.CallOption) (*ferryv1.SetMigrationServerBandwidthResponse, error) {
		return c.servers.SetMigrationServerBandwidth
	}, &ferryv1.SetMigrationServerBandwidthRequest{Name: "migrationServers/kvm"}), ipa, "upstream_bandwidth:"},
	{"set bandwidth of a missing server", unary(func(c *apiClients) func(context.Context, *ferryv1.SetMigrationServerBandwidthRequest, ...grpc.CallOption) (*ferryv1.SetMigrationServerBandwidthResponse, error) {
		return c.servers.SetMigrationServerBandwidth
	}, &ferryv1.SetMigrationServerBandwidthRequest{Name: "migrationServers/x", UpstreamBandwidth: proto.String("1Gbps")}), codes.NotFound, "name:"},
	{"enable a missing server", unary(func(c *apiClients) func(context.Context, *ferryv1.EnableMigrationServerRequest, ...grpc.CallOption) (*ferryv1.EnableMigrationServerResponse, error) {
		return c.servers.EnableMigrationServer
	}, &ferryv1.EnableMigrationServerRequest{Name: "migrationServers/x"}), codes.NotFound, "name:"},
	{"list servers unknown type", unary(func(c *apiClients) func(context.Context, *ferryv1.ListMigrationServersRequest, ...grpc.CallOption) (*ferryv1.ListMigrationServersResponse, error) {
		return c.servers.ListMigrationServers
	}, &ferryv1.ListMigrationServersRequest{Type: 3}), ipa, "type:"},

	// MigrationJobService.
	{"51 VMs in one request", jobs(51, none), ipa, "jobs: at most 50"},
	{"no VMs", jobs(0, none), ipa, "jobs: at least one"},
	{"source of another collection", jobs(1, func(r *ferryv1.CreateMigrationJobsRequest) { r.Source = "credentials/pw" }), ipa, "source:"},
	{"zero vCPUs in the fourth VM", jobs(5, vm(3, func(t *ferryv1.TargetVm) { t.Cpus = 0 })), ipa, "jobs[3].target.cpus:"},
	{"2000 vCPUs", jobs(1, vm(0, func(t *ferryv1.TargetVm) { t.Cpus = 2000 })), ipa, "jobs[0].target.cpus:"},
	{"memory below 1 MiB", jobs(2, vm(1, func(t *ferryv1.TargetVm) { t.MemoryBytes = 4096 })), ipa, "jobs[1].target.memory_bytes:"},
	{"unknown firmware", jobs(1, vm(0, func(t *ferryv1.TargetVm) { t.Firmware = 9 })), ipa, "jobs[0].target.firmware:"},
	{"unknown OS type", jobs(1, vm(0, func(t *ferryv1.TargetVm) { t.OsType = 42 })), ipa, "jobs[0].target.os_type:"},
	{"unknown disk bus", jobs(1, vm(0, func(t *ferryv1.TargetVm) { t.DiskBus = -1 })), ipa, "jobs[0].target.disk_bus:"},
	{"unknown compression", jobs(1, func(r *ferryv1.CreateMigrationJobsRequest) {
		r.Jobs[0].Options = &ferryv1.MigrationOptions{Compression: 7}
	}), ipa, "jobs[0].options.compression:"},
	{"same source VM twice", jobs(3, func(r *ferryv1.CreateMigrationJobsRequest) { r.Jobs[2].SourceVm = r.Jobs[0].SourceVm }), ipa, "jobs[2].source_vm:"},
	{"same target name twice", jobs(2, vm(1, func(t *ferryv1.TargetVm) { t.VmName = "target-0" })), ipa, "jobs[1].target.vm_name:"},
	{"target name very long", jobs(1, vm(0, func(t *ferryv1.TargetVm) { t.VmName = long300 })), ipa, "jobs[0].target.vm_name:"},
	{"target name with a slash", jobs(1, vm(0, func(t *ferryv1.TargetVm) { t.VmName = "a/b" })), ipa, "jobs[0].target.vm_name:"},
	{"target name not UTF-8", rawCall("/ferry.v1.MigrationJobService/CreateMigrationJobs", func() proto.Message {
		r := batch(3)
		r.Jobs[2].Target.VmName = badUTF8
		return r
	}()), ipa, "jobs[2].target.vm_name: not valid UTF-8"},
	{"source VM with a control character", jobs(1, func(r *ferryv1.CreateMigrationJobsRequest) { r.Jobs[0].SourceVm = "vm\x00" }), ipa, "jobs[0].source_vm:"},
	{"negative disk size", jobs(1, vm(0, func(t *ferryv1.TargetVm) { t.Disks[0].SizeBytes = -1 })), ipa, "jobs[0].target.disks[0].size_bytes:"},
	{"same source disk twice", jobs(1, vm(0, func(t *ferryv1.TargetVm) { t.Disks = append(t.Disks, t.Disks[0]) })), ipa, "jobs[0].target.disks[1].source_disk:"},
	{"disk display name too long", jobs(1, vm(0, func(t *ferryv1.TargetVm) { t.Disks[0].DisplayName = long300 })), ipa, "jobs[0].target.disks[0].display_name:"},
	{"same MAC on two NICs", jobs(1, vm(0, func(t *ferryv1.TargetVm) { t.Nics = append(t.Nics, t.Nics[0]) })), ipa, "jobs[0].target.nics[1].source_mac:"},
	{"IP outside the range", jobs(1, vm(0, func(t *ferryv1.TargetVm) { t.Nics[0].Ip = "10.0.0.200" })), ipa, "jobs[0].target.nics[0].ip:"},
	{"IP with a zone", jobs(1, vm(0, func(t *ferryv1.TargetVm) { t.Nics[0].Ip = "fe80::1%eth0" })), ipa, "jobs[0].target.nics[0].ip:"},
	{"four CD-ROMs", jobs(1, vm(0, func(t *ferryv1.TargetVm) { t.CdromCount = 4 })), ipa, "jobs[0].target.cdrom_count:"},
	{"missing network", jobs(1, vm(0, func(t *ferryv1.TargetVm) { t.Nics[0].L3Network = "l3Networks/x" })),
		codes.NotFound, "jobs[0].target.nics[0].l3_network: l3Networks/x not found"},
	{"missing storage", jobs(1, vm(0, func(t *ferryv1.TargetVm) { t.PrimaryStorage = "primaryStorages/x" })),
		codes.NotFound, "jobs[0].target.primary_storage: primaryStorages/x not found"},
	{"missing server", jobs(1, func(r *ferryv1.CreateMigrationJobsRequest) { r.MigrationServer = "migrationServers/x" }),
		codes.NotFound, "migration_server: migrationServers/x not found"},
	{"server type differs from source type", jobs(1, func(r *ferryv1.CreateMigrationJobsRequest) { r.MigrationServer = "migrationServers/vmw" }),
		codes.FailedPrecondition, "jobs: 1 pre-check(s) failed; nothing was created:\nmigration_server: "},
	{"jobs request_id too long", jobs(1, func(r *ferryv1.CreateMigrationJobsRequest) { r.RequestId = long300 }), ipa, "request_id:"},
	{"cancel reason too long", unary(func(c *apiClients) func(context.Context, *ferryv1.CancelMigrationJobRequest, ...grpc.CallOption) (*ferryv1.CancelMigrationJobResponse, error) {
		return c.jobs.CancelMigrationJob
	}, &ferryv1.CancelMigrationJobRequest{Name: "migrationJobs/x", Reason: strings.Repeat("r", 2000)}), ipa, "reason:"},
	{"cancel a missing job", unary(func(c *apiClients) func(context.Context, *ferryv1.CancelMigrationJobRequest, ...grpc.CallOption) (*ferryv1.CancelMigrationJobResponse, error) {
		return c.jobs.CancelMigrationJob
	}, &ferryv1.CancelMigrationJobRequest{Name: "migrationJobs/x"}), codes.NotFound, "name:"},
	{"cutover a missing job", unary(func(c *apiClients) func(context.Context, *ferryv1.CutoverMigrationJobRequest, ...grpc.CallOption) (*ferryv1.CutoverMigrationJobResponse, error) {
		return c.jobs.CutoverMigrationJob
	}, &ferryv1.CutoverMigrationJobRequest{Name: "migrationJobs/x"}), codes.NotFound, "name:"},
	{"cutover an invalid time", unary(func(c *apiClients) func(context.Context, *ferryv1.CutoverMigrationJobRequest, ...grpc.CallOption) (*ferryv1.CutoverMigrationJobResponse, error) {
		return c.jobs.CutoverMigrationJob
	}, &ferryv1.CutoverMigrationJobRequest{Name: "migrationJobs/x", CutoverTime: &timestamppb.Timestamp{Nanos: -1}}), ipa, "cutover_time:"},
	{"cutover a job that is not warm", func(ctx context.Context, c *apiClients) error {
		_, err := c.jobs.CutoverMigrationJob(ctx, &ferryv1.CutoverMigrationJobRequest{Name: queuedJob})
		return err
	}, codes.FailedPrecondition, "name: job migrationJobs/"},
	{"warm precopy interval too short", jobs(1, func(r *ferryv1.CreateMigrationJobsRequest) {
		r.Jobs[0].Options = &ferryv1.MigrationOptions{Mode: ferryv1.MigrationMode_MIGRATION_MODE_WARM, PrecopyInterval: durationpb.New(time.Second)}
	}), ipa, "jobs[0].options.precopy_interval:"},
	{"cutover time of a live job", jobs(1, func(r *ferryv1.CreateMigrationJobsRequest) {
		r.Jobs[0].Options = &ferryv1.MigrationOptions{Mode: ferryv1.MigrationMode_MIGRATION_MODE_LIVE, CutoverTime: timestamppb.Now()}
	}), ipa, "jobs[0].options.cutover_time:"},
	{"unknown mode", jobs(1, func(r *ferryv1.CreateMigrationJobsRequest) {
		r.Jobs[0].Options = &ferryv1.MigrationOptions{Mode: 42}
	}), ipa, "jobs[0].options.mode:"},
	{"restart a queued job", func(ctx context.Context, c *apiClients) error {
		_, err := c.jobs.RestartMigrationJob(ctx, &ferryv1.RestartMigrationJobRequest{Name: queuedJob})
		return err
	}, codes.FailedPrecondition, "name: job migrationJobs/"},
	{"delete a queued job", func(ctx context.Context, c *apiClients) error {
		_, err := c.jobs.DeleteMigrationJob(ctx, &ferryv1.DeleteMigrationJobRequest{Name: queuedJob})
		return err
	}, codes.FailedPrecondition, "name: job migrationJobs/"},
	{"list jobs unknown state", unary(func(c *apiClients) func(context.Context, *ferryv1.ListMigrationJobsRequest, ...grpc.CallOption) (*ferryv1.ListMigrationJobsResponse, error) {
		return c.jobs.ListMigrationJobs
	}, &ferryv1.ListMigrationJobsRequest{State: 42}), ipa, "state:"},
	{"list jobs page size negative", unary(func(c *apiClients) func(context.Context, *ferryv1.ListMigrationJobsRequest, ...grpc.CallOption) (*ferryv1.ListMigrationJobsResponse, error) {
		return c.jobs.ListMigrationJobs
	}, &ferryv1.ListMigrationJobsRequest{PageSize: -1}), ipa, "page_size:"},
	{"list jobs empty page token", unary(func(c *apiClients) func(context.Context, *ferryv1.ListMigrationJobsRequest, ...grpc.CallOption) (*ferryv1.ListMigrationJobsResponse, error) {
		return c.jobs.ListMigrationJobs
	}, &ferryv1.ListMigrationJobsRequest{PageToken: "===="}), ipa, "page_token:"},
	{"watch a malformed name", watch(&ferryv1.WatchMigrationJobsRequest{Names: []string{"migrationJobs/ok", "jobs/1"}}), ipa, "names[1]:"},
	{"watch a malformed server", watch(&ferryv1.WatchMigrationJobsRequest{MigrationServer: "servers/kvm"}), ipa, "migration_server:"},
	{"watch a name not UTF-8", rawCall("/ferry.v1.MigrationJobService/WatchMigrationJobs",
		&ferryv1.WatchMigrationJobsRequest{Names: []string{"migrationJobs/a", badUTF8}}), ipa, "names[1]: not valid UTF-8"},

	// SettingsService.
	{"parallelism zero", settingsMask(&ferryv1.Settings{}, "job_parallelism"), ipa, "settings.job_parallelism:"},
	{"parallelism too high", settingsMask(&ferryv1.Settings{JobParallelism: 100000}, "job_parallelism"), ipa, "settings.job_parallelism:"},
	{"retention negative", settingsMask(&ferryv1.Settings{CacheRetention: durationpb.New(-time.Second)}, "cache_retention"), ipa, "settings.cache_retention:"},
	{"strategy unknown", settingsMask(&ferryv1.Settings{HostAllocationStrategy: 9}, "host_allocation_strategy"), ipa, "settings.host_allocation_strategy:"},
	{"unknown mask path", settingsMask(&ferryv1.Settings{JobParallelism: 5}, "job_parallelism", "parallelism"), ipa, "update_mask.paths[1]:"},
	{"mask path of a nested field", settingsMask(&ferryv1.Settings{}, "cache_retention.seconds"), ipa, "update_mask.paths[0]:"},
	{"mask path names the resource name", settingsMask(&ferryv1.Settings{Name: "settings/x"}, "name"), ipa, "update_mask.paths[0]:"},
	{"empty update", settingsMask(&ferryv1.Settings{}), ipa, "update_mask:"},

	// MembershipService.
	{"add voter without raft address", unary(func(c *apiClients) func(context.Context, *ferryv1.AddVoterRequest, ...grpc.CallOption) (*ferryv1.AddVoterResponse, error) {
		return c.cluster.AddVoter
	}, &ferryv1.AddVoterRequest{Id: "n9", ApiAddress: "127.0.0.1:1"}), ipa, "raft_address:"},
	{"add voter bad id", unary(func(c *apiClients) func(context.Context, *ferryv1.AddVoterRequest, ...grpc.CallOption) (*ferryv1.AddVoterResponse, error) {
		return c.cluster.AddVoter
	}, &ferryv1.AddVoterRequest{Id: "a b", RaftAddress: "127.0.0.1:1", ApiAddress: "127.0.0.1:2"}), ipa, "id:"},
	{"add voter API address without port", unary(func(c *apiClients) func(context.Context, *ferryv1.AddVoterRequest, ...grpc.CallOption) (*ferryv1.AddVoterResponse, error) {
		return c.cluster.AddVoter
	}, &ferryv1.AddVoterRequest{Id: "n9", RaftAddress: "127.0.0.1:1", ApiAddress: "127.0.0.1"}), ipa, "api_address:"},
	{"remove voter without id", unary(func(c *apiClients) func(context.Context, *ferryv1.RemoveVoterRequest, ...grpc.CallOption) (*ferryv1.RemoveVoterResponse, error) {
		return c.cluster.RemoveVoter
	}, &ferryv1.RemoveVoterRequest{}), ipa, "id:"},
}

// queuedJob is the name of the queued job the seed creates.
var queuedJob string

func TestBadInputCorpusOnCluster(t *testing.T) {
	if len(corpus) < 50 {
		t.Fatalf("the corpus holds %d requests; the issue asks for at least 50", len(corpus))
	}
	cl := testcluster.Start(t, 3)
	leader := cl.Leader(10 * time.Second)
	seedCluster(t, leader, newClients(cl.Dial(leader.Addr())))
	follower := cl.Followers()[0]
	targets := []struct {
		name string
		c    *apiClients
	}{{"leader", newClients(cl.Dial(leader.Addr()))}, {"follower", newClients(cl.Dial(follower.Addr()))}}

	before := ledgerStates(t, cl, leader)
	for _, tc := range corpus {
		for _, tg := range targets {
			t.Run(tc.name+"/"+tg.name, func(t *testing.T) {
				err := tc.call(testcluster.Ctx(t, 10*time.Second), tg.c)
				checkRefusal(t, err, tc.code, tc.prefix)
			})
		}
	}
	after := ledgerStates(t, cl, leader)
	for name, b := range before {
		a := after[name]
		api.CheckOnlyAudited(t, name, b.snap, a.snap, b.applied, a.applied)
	}
	t.Logf("%d bad requests, each sent to the leader and to a follower; ledger unchanged but for their audit events from applied index %d",
		len(corpus), before[leader.Name].applied)
}

// checkRefusal wants code and a message starting with prefix; for
// INVALID_ARGUMENT the first BadRequest violation names the same field.
func checkRefusal(t *testing.T, err error, code codes.Code, prefix string) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != code || !strings.HasPrefix(st.Message(), prefix) {
		t.Fatalf("got %v %q, want %v starting with %q", st.Code(), st.Message(), code, prefix)
	}
	if code != codes.InvalidArgument {
		return
	}
	field, _, _ := strings.Cut(prefix, ":")
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok && len(br.GetFieldViolations()) > 0 {
			if got := br.GetFieldViolations()[0].GetField(); got != field {
				t.Fatalf("BadRequest names %q, want %q", got, field)
			}
			return
		}
	}
	t.Fatalf("no BadRequest details in %v", err)
}

type ledgerState struct {
	applied uint64
	snap    *ledgerv1.Snapshot
}

// ledgerStates waits until every node has applied the leader's last
// entry, then reads each node's applied index and ledger.
func ledgerStates(t *testing.T, cl *testcluster.Cluster, leader *testcluster.Node) map[string]ledgerState {
	t.Helper()
	last := leader.Server.Node().Stats().LastIndex
	out := map[string]ledgerState{}
	testcluster.Eventually(t, 10*time.Second, "every node applies the log", func() bool {
		for _, n := range cl.Nodes() {
			if n.Server.Node().Stats().AppliedIndex < last {
				return false
			}
		}
		return true
	})
	for _, n := range cl.Nodes() {
		out[n.Name] = ledgerState{applied: n.Server.Node().Stats().AppliedIndex, snap: n.Server.Ledger().Snapshot()}
	}
	return out
}

// seedCluster makes what the corpus refers to: hosts kvm1, vm1
// and spare (put through Raft as agents' hellos would), cluster c1, nfs
// and local storage, network net1, a password and a key credential, a kvm
// and a vmware source, a server of each type and one queued job.
func seedCluster(t *testing.T, leader *testcluster.Node, c *apiClients) {
	t.Helper()
	ctx := testcluster.Ctx(t, 30*time.Second)
	for _, h := range []string{"kvm1", "vm1", "spare"} {
		if _, err := leader.Server.Node().Propose(ctx, &ledgerv1.Command{Op: &ledgerv1.Command_PutHost{PutHost: &ledgerv1.PutHost{
			Host: &ferryv1.Host{Name: "hosts/" + h, Cluster: "clusters/c1", Connected: h == "kvm1"}}}}); err != nil {
			t.Fatal(err)
		}
	}
	steps := []func() error{
		func() error {
			_, err := c.inv.CreateCluster(ctx, &ferryv1.CreateClusterRequest{Cluster: &ferryv1.Cluster{Name: "clusters/c1"}})
			return err
		},
		func() error {
			_, err := c.inv.CreatePrimaryStorage(ctx, &ferryv1.CreatePrimaryStorageRequest{PrimaryStorage: &ferryv1.PrimaryStorage{
				Name: "primaryStorages/nfs", Cluster: "clusters/c1", Type: ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_NFS, Path: "/mnt/nfs"}})
			return err
		},
		func() error {
			_, err := c.inv.CreateL3Network(ctx, &ferryv1.CreateL3NetworkRequest{L3Network: &ferryv1.L3Network{
				Name: "l3Networks/net1", Cluster: "clusters/c1", Bridge: "br0",
				IpRangeStart: "10.0.0.10", IpRangeEnd: "10.0.0.50", Gateway: "10.0.0.1", PrefixLength: 24}})
			return err
		},
		func() error {
			_, err := c.sources.CreateCredential(ctx, &ferryv1.CreateCredentialRequest{Credential: &ferryv1.Credential{
				Name: "credentials/pw", Type: ferryv1.CredentialType_CREDENTIAL_TYPE_PASSWORD, Secret: "s3cret"}})
			return err
		},
		func() error {
			_, err := c.sources.CreateCredential(ctx, &ferryv1.CreateCredentialRequest{Credential: &ferryv1.Credential{
				Name: "credentials/key", Type: ferryv1.CredentialType_CREDENTIAL_TYPE_PRIVATE_KEY, Secret: testKey(t)}})
			return err
		},
		func() error {
			_, err := c.sources.CreateSource(ctx, &ferryv1.CreateSourceRequest{Source: &ferryv1.Source{
				Name: "sources/kvm", Type: ferryv1.Platform_PLATFORM_KVM, Kvm: &ferryv1.KvmConnection{Address: "192.0.2.10", Credential: "credentials/pw"}}})
			return err
		},
		func() error {
			_, err := c.servers.CreateMigrationServer(ctx, &ferryv1.CreateMigrationServerRequest{MigrationServer: &ferryv1.MigrationServer{
				Name: "migrationServers/kvm", Host: "hosts/kvm1", Type: ferryv1.Platform_PLATFORM_KVM, CachePath: "/var/cache/ferry"}})
			return err
		},
		func() error {
			_, err := c.servers.CreateMigrationServer(ctx, &ferryv1.CreateMigrationServerRequest{MigrationServer: &ferryv1.MigrationServer{
				Name: "migrationServers/vmw", Host: "hosts/vm1", Type: ferryv1.Platform_PLATFORM_VMWARE, CachePath: "/var/cache/ferry"}})
			return err
		},
		func() error {
			resp, err := c.jobs.CreateMigrationJobs(ctx, batch(1))
			if err == nil {
				queuedJob = resp.GetJobs()[0].GetName()
			}
			return err
		},
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("seed step %d: %v", i, err)
		}
	}
	// The scheduler records why the job waits (its server has no agent);
	// that write must land before the ledger is compared.
	testcluster.Eventually(t, 10*time.Second, "the queued job has a waiting reason", func() bool {
		j, ok := leader.Server.Ledger().Job(queuedJob)
		return ok && j.GetWaitingReason() != ""
	})
}

// testKey is an unencrypted ed25519 key made for this test only.
func testKey(t *testing.T) string {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(block))
}
