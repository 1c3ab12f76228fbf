// Package agenttest runs a real ferry-agent — its session client and its
// runner — in-process, for the integration tests of other packages (the
// coordinator's cluster tests cannot import agent/internal). The test
// supplies what stands in for the drivers as a Copier from its own
// _test.go file; this package holds no fake driver of its own, and the
// shipped binaries do not import it (TestBinariesDoNotImportAgenttest).
package agenttest

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"

	"github.com/ferry-v2v/ferry/agent/internal/facts"
	"github.com/ferry-v2v/ferry/agent/internal/runner"
	"github.com/ferry-v2v/ferry/agent/internal/session"
	"github.com/ferry-v2v/ferry/agent/internal/source/vmware"
	"github.com/ferry-v2v/ferry/agent/internal/source/vmware/vcsimtest"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// Copier moves one disk of a job in one phase (CONVERTING, then
// UPLOADING), calling add with the bytes it moved.
type Copier func(ctx context.Context, job, disk string, size int64, add func(n int64)) error

// Options describe the agent.
type Options struct {
	Coordinators []string
	HostName     string
	// Cluster is the target cluster the agent's host joins ("c1" or
	// "clusters/c1"); none when empty.
	Cluster     string
	Credentials credentials.TransportCredentials
	// Copy stands in for the source and target drivers. Nil leaves the
	// agent without drivers, as the shipped binary is.
	Copy Copier
	// VMware gives the agent the real VMware source driver, which reads
	// the inventory of a vCenter such as StartVCSim's; with Copy, Copy
	// still copies the disks of jobs.
	VMware bool
	// DataDir holds job caches; the test's temporary directory by default.
	DataDir string
	// CacheTotal and CacheFree are the cache facts the agent reports.
	CacheTotal, CacheFree int64
	// Facts are the other facts it reports (2 CPUs when nil); the space
	// of the storage paths the coordinator names is measured for real.
	Facts  *ferryv1.HostFacts
	Logger *slog.Logger
}

// Agent is a running in-process agent.
type Agent struct {
	client *session.Client
	runner *runner.Runner
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once

	mu     sync.Mutex
	hellos []SentHello
}

// SentHello is a hello the agent sent, and to which coordinator.
type SentHello struct {
	Target string
	Hello  *agentv1.Hello
}

// Start runs an agent until Stop or the end of the test.
func Start(t testing.TB, o Options) *Agent {
	t.Helper()
	if o.DataDir == "" {
		o.DataDir = t.TempDir()
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	a := &Agent{done: make(chan struct{})}
	outbox := session.NewOutbox()
	var drivers runner.Drivers
	if o.Copy != nil {
		d := copyDrivers{copy: o.Copy}
		drivers = runner.Drivers{Target: d, Sources: map[ferryv1.Platform]runner.Source{
			ferryv1.Platform_PLATFORM_KVM: d, ferryv1.Platform_PLATFORM_VMWARE: d}}
	}
	if o.VMware {
		if drivers.Sources == nil {
			drivers.Sources = map[ferryv1.Platform]runner.Source{}
		}
		drivers.Sources[ferryv1.Platform_PLATFORM_VMWARE] = vmwareSource{
			Driver: vmware.NewDriver(o.Logger, vmware.Options{}), copy: drivers.Sources[ferryv1.Platform_PLATFORM_VMWARE]}
	}
	a.runner = runner.New(runner.Config{DataDir: o.DataDir}, runner.Deps{Drivers: drivers, Reporter: outbox, Logger: o.Logger})
	a.client = session.New(session.Config{
		Coordinators: o.Coordinators, HostName: o.HostName, Cluster: o.Cluster, AgentVersion: "agenttest", Credentials: o.Credentials,
		BackoffMin: 50 * time.Millisecond, BackoffMax: 500 * time.Millisecond, FactsInterval: time.Hour,
		DialOptions: []grpc.DialOption{grpc.WithStreamInterceptor(a.recordHellos)},
	}, session.Deps{Runner: a.runner, Outbox: outbox, Logger: o.Logger, Facts: newStaticFacts(o)})
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = a.runner.Run(ctx) }()
	go func() { defer wg.Done(); _ = a.client.Run(ctx) }()
	go func() { wg.Wait(); close(a.done) }()
	t.Cleanup(a.Stop)
	return a
}

// Stop kills the agent: its jobs are interrupted and report nothing.
func (a *Agent) Stop() {
	a.once.Do(func() {
		a.cancel()
		<-a.done
	})
}

// Coordinator is the address of the coordinator holding the agent's
// session, or "" when it has none.
func (a *Agent) Coordinator() string { return a.client.Coordinator() }

// Held lists the jobs the agent's runner is running.
func (a *Agent) Held() []*agentv1.HeldJob { return a.runner.Held() }

// Hellos returns the hellos sent so far.
func (a *Agent) Hellos() []SentHello {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]SentHello(nil), a.hellos...)
}

func (a *Agent) recordHellos(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string,
	streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	cs, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil {
		return nil, err
	}
	return &recordingStream{ClientStream: cs, agent: a, target: cc.Target()}, nil
}

type recordingStream struct {
	grpc.ClientStream
	agent  *Agent
	target string
}

func (s *recordingStream) SendMsg(m any) error {
	if req, ok := m.(*agentv1.ConnectRequest); ok && req.GetHello() != nil {
		s.agent.mu.Lock()
		s.agent.hellos = append(s.agent.hellos, SentHello{Target: s.target, Hello: req.GetHello()})
		s.agent.mu.Unlock()
	}
	return s.ClientStream.SendMsg(m)
}

// staticFacts reports fixed facts plus the measured space of the storage
// paths the coordinator names.
type staticFacts struct {
	f       *ferryv1.HostFacts
	storage *facts.Collector
}

func newStaticFacts(o Options) staticFacts {
	f := proto.Clone(o.Facts).(*ferryv1.HostFacts)
	if o.Facts == nil {
		f = &ferryv1.HostFacts{Cpus: 2}
	}
	f.CacheTotalBytes, f.CacheFreeBytes = o.CacheTotal, o.CacheFree
	return staticFacts{f: f, storage: facts.New("", o.Logger)}
}

func (s staticFacts) Collect(context.Context) *ferryv1.HostFacts {
	f := proto.Clone(s.f).(*ferryv1.HostFacts)
	f.Storages = s.storage.Storages()
	return f
}

func (s staticFacts) SetStoragePaths(paths []string) bool { return s.storage.SetStoragePaths(paths) }

// copyDrivers adapts a Copier to the runner's driver interfaces.
type copyDrivers struct{ copy Copier }

func (d copyDrivers) Convert(ctx context.Context, j *runner.Job) error { return d.each(ctx, j) }

func (d copyDrivers) Upload(ctx context.Context, j *runner.Job) error { return d.each(ctx, j) }

func (d copyDrivers) Configure(context.Context, *runner.Job) ([]string, error) { return nil, nil }

func (d copyDrivers) each(ctx context.Context, j *runner.Job) error {
	for _, disk := range j.Assignment.GetJob().GetTarget().GetDisks() {
		name := disk.GetSourceDisk()
		add := func(n int64) { j.Progress.Add(name, n) }
		if err := d.copy(ctx, j.Name(), name, disk.GetSizeBytes(), add); err != nil {
			return err
		}
	}
	return nil
}

// vmwareSource is the real VMware driver for inventories; jobs go to the
// test's Copier when it has one, else to the driver.
type vmwareSource struct {
	*vmware.Driver
	copy runner.Source
}

func (v vmwareSource) Convert(ctx context.Context, j *runner.Job) error {
	if v.copy != nil {
		return v.copy.Convert(ctx, j)
	}
	return v.Driver.Convert(ctx, j)
}

// VCSim is an in-process vCenter simulator (govmomi's vcsim with Ferry's
// additions), for the coordinator's tests.
type VCSim = vcsimtest.Sim

// StartVCSim runs a vCenter simulator until the test ends.
func StartVCSim(t testing.TB) *VCSim { return vcsimtest.Start(t) }
