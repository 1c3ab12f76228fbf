package session_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/ferry-v2v/ferry/agent/agenttest"
	"github.com/ferry-v2v/ferry/coordinator/internal/api"
	"github.com/ferry-v2v/ferry/coordinator/internal/session"
	"github.com/ferry-v2v/ferry/coordinator/internal/testcluster"
	"github.com/ferry-v2v/ferry/pkg/client"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

const gib = int64(1) << 30

// The API lists source VMs through the session manager.
var _ api.Agents = (*session.Manager)(nil)

// gates holds back jobs: a test-only copier waits on a job's gate, when
// it has one, before every chunk.
type gates struct {
	mu sync.Mutex
	m  map[string]chan struct{}
}

func (g *gates) hold(job string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.m[job] = make(chan struct{})
}

func (g *gates) release(job string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if ch, ok := g.m[job]; ok {
		close(ch)
		delete(g.m, job)
	}
}

func (g *gates) wait(ctx context.Context, job string) error {
	g.mu.Lock()
	ch := g.m[job]
	g.mu.Unlock()
	if ch == nil {
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// copier is the test driver: each phase of a disk is 12 chunks 100 ms
// apart, so a phase lasts long enough for throttled progress to show.
func (g *gates) copier() agenttest.Copier {
	return func(ctx context.Context, job, _ string, size int64, add func(int64)) error {
		const chunks = 12
		for i := range int64(chunks) {
			if err := g.wait(ctx, job); err != nil {
				return err
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
			add(size*(i+1)/chunks - size*i/chunks)
		}
		return nil
	}
}

func apiClient(t *testing.T, c *testcluster.Cluster) *client.Client {
	t.Helper()
	var addrs []string
	for _, n := range c.Nodes() {
		addrs = append(addrs, n.Addr())
	}
	cl, err := client.New(context.Background(), client.Options{Addresses: addrs, TLSDir: c.TLSDir,
		Timeout: 10 * time.Second, LinearizableReads: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Close() })
	return cl
}

// seed creates the inventory the jobs need; hosts register themselves.
func seed(t *testing.T, cl *client.Client) {
	t.Helper()
	ctx := testcluster.Ctx(t, 10*time.Second)
	steps := []func() error{
		func() error {
			_, err := cl.TargetInventory().CreateCluster(ctx, &ferryv1.CreateClusterRequest{Cluster: &ferryv1.Cluster{Name: "clusters/c1"}})
			return err
		},
		func() error {
			_, err := cl.TargetInventory().CreatePrimaryStorage(ctx, &ferryv1.CreatePrimaryStorageRequest{PrimaryStorage: &ferryv1.PrimaryStorage{
				Name: "primaryStorages/nfs", Cluster: "clusters/c1", Type: ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_NFS, Path: "/mnt/nfs"}})
			return err
		},
		func() error {
			_, err := cl.TargetInventory().CreateL3Network(ctx, &ferryv1.CreateL3NetworkRequest{L3Network: &ferryv1.L3Network{
				Name: "l3Networks/net1", Cluster: "clusters/c1", Bridge: "br0",
				IpRangeStart: "10.0.0.10", IpRangeEnd: "10.0.0.50", Gateway: "10.0.0.1", PrefixLength: 24}})
			return err
		},
		func() error {
			_, err := cl.Sources().CreateCredential(ctx, &ferryv1.CreateCredentialRequest{Credential: &ferryv1.Credential{
				Name: "credentials/pw", Type: ferryv1.CredentialType_CREDENTIAL_TYPE_PASSWORD, Secret: "s3cret"}})
			return err
		},
		func() error {
			_, err := cl.Sources().CreateSource(ctx, &ferryv1.CreateSourceRequest{Source: &ferryv1.Source{
				Name: "sources/kvm", Type: ferryv1.Platform_PLATFORM_KVM, Kvm: &ferryv1.KvmConnection{Address: "192.0.2.10", Credential: "credentials/pw"}}})
			return err
		},
	}
	for _, step := range steps {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
}

func createServer(t *testing.T, cl *client.Client, name, host string) {
	t.Helper()
	createServerAt(t, cl, name, host, t.TempDir())
}

func createServerAt(t *testing.T, cl *client.Client, name, host, cachePath string) {
	t.Helper()
	_, err := cl.MigrationServers().CreateMigrationServer(testcluster.Ctx(t, 10*time.Second), &ferryv1.CreateMigrationServerRequest{
		MigrationServer: &ferryv1.MigrationServer{Name: name, Host: host, Type: ferryv1.Platform_PLATFORM_KVM, CachePath: cachePath}})
	if err != nil {
		t.Fatalf("create migration server %s: %v", name, err)
	}
}

// createJob queues one VM with a 1 MiB disk on server and returns its name.
func createJob(t *testing.T, cl *client.Client, server, vm string) string {
	t.Helper()
	resp, err := cl.Jobs().CreateMigrationJobs(testcluster.Ctx(t, 10*time.Second), &ferryv1.CreateMigrationJobsRequest{
		Source: "sources/kvm", MigrationServer: server, Jobs: []*ferryv1.MigrationJobSpec{{
			SourceVm: vm,
			Target: &ferryv1.TargetVm{VmName: vm, Cluster: "clusters/c1", PrimaryStorage: "primaryStorages/nfs", Cpus: 1, MemoryBytes: gib,
				Disks: []*ferryv1.TargetDisk{{SourceDisk: "vda", SizeBytes: 1 << 20}},
				Nics:  []*ferryv1.TargetNic{{SourceMac: "52:54:00:00:00:01", L3Network: "l3Networks/net1"}}},
		}}})
	if err != nil {
		t.Fatalf("create job: %v", err)
	}
	return resp.GetJobs()[0].GetName()
}

func getJob(t *testing.T, cl *client.Client, name string) *ferryv1.MigrationJob {
	t.Helper()
	resp, err := cl.Jobs().GetMigrationJob(testcluster.Ctx(t, 10*time.Second), &ferryv1.GetMigrationJobRequest{Name: name})
	if err != nil {
		t.Fatalf("get %s: %v", name, err)
	}
	return resp
}

func waitState(t *testing.T, cl *client.Client, name string, want ferryv1.MigrationJobState) *ferryv1.MigrationJob {
	t.Helper()
	var j *ferryv1.MigrationJob
	testcluster.Eventually(t, 15*time.Second, name+" is "+want.String(), func() bool {
		j = getJob(t, cl, name)
		return j.GetState() == want
	})
	return j
}

// rawAgent is a scripted agent on a bare stream, for what the real agent
// never does (reporting a stale epoch). It heartbeats in the background.
type rawAgent struct {
	t      *testing.T
	stream agentv1.AgentService_ConnectClient
	mu     sync.Mutex // serialises Send
	in     chan *agentv1.ConnectResponse
}

func startRawAgent(t *testing.T, conn *grpc.ClientConn, hello *agentv1.Hello) *rawAgent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := agentv1.NewAgentServiceClient(conn).Connect(ctx)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	a := &rawAgent{t: t, stream: stream, in: make(chan *agentv1.ConnectResponse, 16)}
	a.send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Hello{Hello: hello}})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for {
			msg, err := stream.Recv()
			if err != nil {
				return
			}
			if msg.GetHeartbeat() == nil {
				select {
				case a.in <- msg:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	go func() {
		defer wg.Done()
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				_ = a.trySend(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Heartbeat{Heartbeat: &agentv1.Heartbeat{}}})
			}
		}
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })
	return a
}

func (a *rawAgent) trySend(req *agentv1.ConnectRequest) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.stream.Send(req)
}

func (a *rawAgent) send(req *agentv1.ConnectRequest) {
	a.t.Helper()
	if err := a.trySend(req); err != nil {
		a.t.Fatal(err)
	}
}

func (a *rawAgent) next() *agentv1.ConnectResponse {
	a.t.Helper()
	select {
	case msg := <-a.in:
		return msg
	case <-time.After(10 * time.Second):
		a.t.Fatal("raw agent: no message within 10s")
	}
	return nil
}
