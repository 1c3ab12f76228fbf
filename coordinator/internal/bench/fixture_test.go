package bench

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/ferry-v2v/ferry/coordinator/internal/testcluster"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

const (
	gib = int64(1) << 30

	benchCluster = "clusters/bench"
	benchStorage = "primaryStorages/nfs"
	benchNetwork = "l3Networks/net16"
	benchSource  = "sources/kvm"
)

// apiClients are the ferry.v1 services on one connection.
type apiClients struct {
	inv      ferryv1.TargetInventoryServiceClient
	servers  ferryv1.MigrationServerServiceClient
	sources  ferryv1.SourceServiceClient
	jobs     ferryv1.MigrationJobServiceClient
	settings ferryv1.SettingsServiceClient
	members  ferryv1.MembershipServiceClient
}

func newAPI(conn grpc.ClientConnInterface) *apiClients {
	return &apiClients{
		inv:      ferryv1.NewTargetInventoryServiceClient(conn),
		servers:  ferryv1.NewMigrationServerServiceClient(conn),
		sources:  ferryv1.NewSourceServiceClient(conn),
		jobs:     ferryv1.NewMigrationJobServiceClient(conn),
		settings: ferryv1.NewSettingsServiceClient(conn),
		members:  ferryv1.NewMembershipServiceClient(conn),
	}
}

// seedJobReferences creates what every job refers to: a cluster, NFS primary
// storage, a /16 L3 network (65,533 addresses to allocate from), a
// password credential and a KVM source. Hosts register through agents.
func seedJobReferences(tb testing.TB, api *apiClients) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	steps := []func() error{
		func() error {
			_, err := api.inv.CreateCluster(ctx, &ferryv1.CreateClusterRequest{Cluster: &ferryv1.Cluster{Name: benchCluster}})
			return err
		},
		func() error {
			_, err := api.inv.CreatePrimaryStorage(ctx, &ferryv1.CreatePrimaryStorageRequest{PrimaryStorage: &ferryv1.PrimaryStorage{
				Name: benchStorage, Cluster: benchCluster, Type: ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_NFS, Path: "/mnt/nfs"}})
			return err
		},
		func() error {
			_, err := api.inv.CreateL3Network(ctx, &ferryv1.CreateL3NetworkRequest{L3Network: &ferryv1.L3Network{
				Name: benchNetwork, Cluster: benchCluster, Bridge: "br0",
				IpRangeStart: "10.1.0.2", IpRangeEnd: "10.1.255.254", Gateway: "10.1.0.1", PrefixLength: 16}})
			return err
		},
		func() error {
			_, err := api.sources.CreateCredential(ctx, &ferryv1.CreateCredentialRequest{Credential: &ferryv1.Credential{
				Name: "credentials/pw", Type: ferryv1.CredentialType_CREDENTIAL_TYPE_PASSWORD, Secret: "bench-s3cret"}})
			return err
		},
		func() error {
			_, err := api.sources.CreateSource(ctx, &ferryv1.CreateSourceRequest{Source: &ferryv1.Source{
				Name: benchSource, Type: ferryv1.Platform_PLATFORM_KVM,
				Kvm: &ferryv1.KvmConnection{Address: "192.0.2.10", Credential: "credentials/pw"}}})
			return err
		},
	}
	for i, step := range steps {
		if err := step(); err != nil {
			tb.Fatalf("seed job references, step %d: %v", i, err)
		}
	}
}

// createServer makes host a KVM migration server; the host must have
// registered (its agent said hello). A new server is enabled.
func createServer(ctx context.Context, api *apiClients, name, host string) error {
	_, err := api.servers.CreateMigrationServer(ctx, &ferryv1.CreateMigrationServerRequest{MigrationServer: &ferryv1.MigrationServer{
		Name: name, Host: host, Type: ferryv1.Platform_PLATFORM_KVM, CachePath: "/var/cache/ferry"}})
	if err != nil {
		return fmt.Errorf("create migration server %s on %s: %w", name, host, err)
	}
	return nil
}

// setParallelism sets the job_parallelism setting.
func setParallelism(ctx context.Context, api *apiClients, n int32) error {
	_, err := api.settings.UpdateSettings(ctx, &ferryv1.UpdateSettingsRequest{
		Settings:   &ferryv1.Settings{JobParallelism: n},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"job_parallelism"}},
	})
	if err != nil {
		return fmt.Errorf("set job_parallelism %d: %w", n, err)
	}
	return nil
}

// jobsRequest is a batch of n VMs numbered from first (unique across the
// run: VM names and MACs derive from the number), each with one 10 GiB
// disk and one NIC whose address the API allocates.
func jobsRequest(server string, first, n int) *ferryv1.CreateMigrationJobsRequest {
	req := &ferryv1.CreateMigrationJobsRequest{Source: benchSource, MigrationServer: server}
	for i := first; i < first+n; i++ {
		req.Jobs = append(req.Jobs, &ferryv1.MigrationJobSpec{
			SourceVm: fmt.Sprintf("vm-%d", i),
			Target: &ferryv1.TargetVm{
				VmName: fmt.Sprintf("target-%d", i), Cluster: benchCluster, PrimaryStorage: benchStorage,
				Cpus: 2, MemoryBytes: 2 * gib,
				Disks: []*ferryv1.TargetDisk{{SourceDisk: "vda", SizeBytes: 10 * gib}},
				Nics: []*ferryv1.TargetNic{{L3Network: benchNetwork,
					SourceMac: fmt.Sprintf("52:54:%02x:%02x:%02x:%02x", byte(i>>24), byte(i>>16), byte(i>>8), byte(i))}},
			},
		})
	}
	return req
}

// countJobs counts the jobs in state by paging through ListMigrationJobs.
func countJobs(ctx context.Context, api *apiClients, state ferryv1.MigrationJobState) (int, error) {
	n, token := 0, ""
	for {
		resp, err := api.jobs.ListMigrationJobs(ctx, &ferryv1.ListMigrationJobsRequest{State: state, PageSize: 500, PageToken: token})
		if err != nil {
			return n, fmt.Errorf("list %s jobs: %w", state, err)
		}
		n += len(resp.GetJobs())
		if token = resp.GetNextPageToken(); token == "" {
			return n, nil
		}
	}
}

// startCluster is testcluster.Start with only errors logged (to stderr),
// so election chatter does not bury the figures.
func startCluster(b *testing.B, n int) *testcluster.Cluster {
	b.Helper()
	return startClusterWith(b, n, nil)
}

// startClusterWith is startCluster with the cluster tuned before its
// nodes start.
func startClusterWith(b *testing.B, n int, tune func(*testcluster.Cluster)) *testcluster.Cluster {
	b.Helper()
	c := testcluster.New(b)
	c.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	if tune != nil {
		tune(c)
	}
	for range n {
		c.AddNode()
	}
	c.WaitMembers(n, 10*time.Second)
	return c
}

// waitLeader polls ListMembers until the node knows a leader.
func waitLeader(tb testing.TB, api *apiClients, timeout time.Duration) {
	tb.Helper()
	testkit.WaitFor(tb, timeout, "the coordinator to elect itself leader", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		resp, err := api.members.ListMembers(ctx, &ferryv1.ListMembersRequest{})
		return err == nil && resp.GetLeaderAddress() != ""
	})
}

// percentile returns the p-th percentile (0-100) of sorted samples, by the
// nearest-rank method.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(p/100*float64(len(sorted))+0.999999) - 1
	return sorted[min(max(rank, 0), len(sorted)-1)]
}

// latencySummary sorts samples and returns their p50, p99, max and mean.
func latencySummary(samples []time.Duration) (p50, p99, maxD, mean time.Duration) {
	s := slices.Clone(samples)
	slices.Sort(s)
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	if len(s) == 0 {
		return 0, 0, 0, 0
	}
	return percentile(s, 50), percentile(s, 99), s[len(s)-1], sum / time.Duration(len(s))
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
