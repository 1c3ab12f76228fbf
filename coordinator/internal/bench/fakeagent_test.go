package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// progressRate is how fast a fake agent's disks advance: a 10 GiB disk
// takes 1,000 s, far longer than any run, so jobs never finish.
const progressRate = 10 << 20

// fakeAgent is a load generator speaking AgentService.Connect as an
// agent would: Hello with facts, heartbeats at the Welcome interval, and
// JobProgress once a second for every job it was assigned, never a
// result. It runs no job.
type fakeAgent struct {
	host  string
	facts *ferryv1.HostFacts
	// welcomed is closed once the coordinator accepted the session.
	welcomed chan struct{}
	// assigned counts the assignments received, progressSent the
	// progress messages sent.
	assigned     atomic.Int64
	progressSent atomic.Int64

	mu   sync.Mutex
	jobs map[string]*heldJob
}

type heldJob struct {
	epoch int64
	disks []*ferryv1.DiskProgress
}

func newFakeAgent(host string, cacheBytes int64) *fakeAgent {
	return &fakeAgent{
		host: host,
		facts: &ferryv1.HostFacts{Cpus: 32, MemoryBytes: 256 * gib, LibvirtVersion: "9.0.0", QemuVersion: "7.2.0",
			CacheTotalBytes: cacheBytes, CacheFreeBytes: cacheBytes,
			// The cache_path of the fixture's servers, which admission reads.
			Storages:   []*ferryv1.StorageSpace{{Path: "/var/cache/ferry", TotalBytes: cacheBytes, FreeBytes: cacheBytes}},
			Interfaces: []*ferryv1.NetworkInterface{{Name: "eth0", Addresses: []string{"192.0.2.100/24"}}}},
		welcomed: make(chan struct{}),
		jobs:     map[string]*heldJob{},
	}
}

// run holds one session until ctx ends or the stream fails.
func (a *fakeAgent) run(parent context.Context, conn grpc.ClientConnInterface) error {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	g, ctx := errgroup.WithContext(ctx)
	stream, err := agentv1.NewAgentServiceClient(conn).Connect(ctx)
	if err != nil {
		return fmt.Errorf("%s: connect: %w", a.host, err)
	}
	hello := &agentv1.Hello{HostName: a.host, Cluster: benchCluster, AgentVersion: "bench", Facts: a.facts} // jobs are placed on these hosts
	if err := stream.Send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Hello{Hello: hello}}); err != nil {
		return fmt.Errorf("%s: hello: %w", a.host, err)
	}
	resp, err := stream.Recv()
	if err != nil {
		return fmt.Errorf("%s: waiting for welcome: %w", a.host, err)
	}
	interval := time.Duration(resp.GetWelcome().GetHeartbeatIntervalMs()) * time.Millisecond
	if interval <= 0 {
		return fmt.Errorf("%s: first answer is %T, want a welcome with a heartbeat interval", a.host, resp.GetKind())
	}
	close(a.welcomed)
	g.Go(func() error { return a.recvLoop(stream) })
	g.Go(func() error { return a.sendLoop(ctx, stream, interval) })
	err = g.Wait()
	if parent.Err() != nil {
		return nil
	}
	return err
}

// recvLoop takes assignments and cancellations; heartbeats need no answer.
func (a *fakeAgent) recvLoop(stream agentv1.AgentService_ConnectClient) error {
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("%s: the coordinator ended the session", a.host)
		}
		if err != nil {
			return err
		}
		switch k := resp.GetKind().(type) {
		case *agentv1.ConnectResponse_Assignment:
			a.take(k.Assignment)
		case *agentv1.ConnectResponse_Cancellation:
			a.mu.Lock()
			delete(a.jobs, k.Cancellation.GetJob())
			a.mu.Unlock()
		}
	}
}

func (a *fakeAgent) take(as *agentv1.Assignment) {
	h := &heldJob{epoch: as.GetEpoch()}
	for _, d := range as.GetJob().GetTarget().GetDisks() {
		h.disks = append(h.disks, &ferryv1.DiskProgress{SourceDisk: d.GetSourceDisk(), TotalBytes: d.GetSizeBytes()})
	}
	a.mu.Lock()
	a.jobs[as.GetJob().GetName()] = h
	a.mu.Unlock()
	a.assigned.Add(1)
}

// sendLoop is the only sender after Hello: heartbeats at the coordinator's
// interval and progress of every held job once a second.
func (a *fakeAgent) sendLoop(ctx context.Context, stream agentv1.AgentService_ConnectClient, interval time.Duration) error {
	beat := time.NewTicker(interval)
	defer beat.Stop()
	progress := time.NewTicker(time.Second)
	defer progress.Stop()
	for {
		select {
		case <-ctx.Done():
			_ = stream.CloseSend()
			return nil
		case <-beat.C:
			hb := &agentv1.Heartbeat{Time: timestamppb.Now()}
			if err := stream.Send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Heartbeat{Heartbeat: hb}}); err != nil {
				return fmt.Errorf("%s: heartbeat: %w", a.host, err)
			}
		case <-progress.C:
			for _, p := range a.advance() {
				if err := stream.Send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Progress{Progress: p}}); err != nil {
					return fmt.Errorf("%s: progress: %w", a.host, err)
				}
				a.progressSent.Add(1)
			}
		}
	}
}

// advance moves every held job's disks on by one second and returns
// their progress messages; a disk stops one byte short of its end.
func (a *fakeAgent) advance() []*agentv1.JobProgress {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]*agentv1.JobProgress, 0, len(a.jobs))
	for name, h := range a.jobs {
		p := &agentv1.JobProgress{Job: name, Epoch: h.epoch, Phase: ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONVERTING}
		for _, d := range h.disks {
			d.DoneBytes = min(d.DoneBytes+progressRate, d.TotalBytes-1)
			d.BytesPerSecond = progressRate
			p.Disks = append(p.Disks, &ferryv1.DiskProgress{SourceDisk: d.SourceDisk, TotalBytes: d.TotalBytes,
				DoneBytes: d.DoneBytes, BytesPerSecond: d.BytesPerSecond})
		}
		out = append(out, p)
	}
	return out
}

// registerHost makes host known to the ledger and connected, as its
// agent's session does, once welcomed.
func registerHost(ctx context.Context, conn grpc.ClientConnInterface, host string) error {
	// The session stays open until ctx ends: placement picks only
	// connected hosts for the jobs the benchmarks create.
	a := newFakeAgent(host, 1<<40)
	done := make(chan error, 1)
	go func() { done <- a.run(ctx, conn) }()
	select {
	case <-a.welcomed:
		return nil
	case err := <-done:
		return fmt.Errorf("register %s: %w", host, err)
	case <-time.After(30 * time.Second):
		return fmt.Errorf("register %s: no welcome within 30 s", host)
	}
}
