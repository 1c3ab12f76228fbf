package session

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
)

func setBandwidth(f *fixture, up, down int64) {
	f.apply(&ledgerv1.Command{Op: &ledgerv1.Command_SetMigrationServerBandwidth{SetMigrationServerBandwidth: &ledgerv1.SetMigrationServerBandwidth{
		Name: "migrationServers/ms", UpstreamBandwidth: proto.String("x"), UpstreamBitsPerSecond: proto.Int64(up),
		DownstreamBandwidth: proto.String("y"), DownstreamBitsPerSecond: proto.Int64(down)}}})
}

// A server's limits go to the agent of its host when it says hello and
// whenever they change (to a limit and back to none), and to no other agent.
func TestBandwidthLimitsReachTheServersAgent(t *testing.T) {
	f := newFixture(t, Config{HeartbeatInterval: time.Hour}, true)
	f.ledger.SetServerObserver(f.mgr.ServerChanged)
	f.seedJob("hosts/h1", 1)
	setBandwidth(f, 16<<20, 0)
	a := f.connect(hello("h1"))
	other := f.connect(hello("h2"))
	want := func(up, down int64) *agentv1.BandwidthLimits {
		return &agentv1.BandwidthLimits{MigrationServer: "migrationServers/ms", UpstreamBitsPerSecond: up, DownstreamBitsPerSecond: down}
	}
	if got := a.nextLimits(); !proto.Equal(got, want(16<<20, 0)) {
		t.Fatalf("limits after hello = %v", got)
	}
	for _, s := range []struct{ up, down int64 }{{16 << 20, 64 << 20}, {0, 0}, {8 << 10, 32 << 30}} {
		start := time.Now()
		setBandwidth(f, s.up, s.down)
		if got := a.nextLimits(); !proto.Equal(got, want(s.up, s.down)) {
			t.Fatalf("limits after a change to %d/%d = %v", s.up, s.down, got)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("the change took %s to reach the agent", d)
		}
	}
	other.next() // welcome
	select {
	case msg := <-other.in:
		if msg.GetBandwidthLimits() != nil {
			t.Fatalf("another host's agent got %v", msg)
		}
	case <-time.After(200 * time.Millisecond):
	}
}

// An assignment built before a change and queued after it is followed by
// the current limits, so it cannot set the agent's buckets back.
func TestBandwidthLimitsFollowAStaleAssignment(t *testing.T) {
	f := newFixture(t, Config{HeartbeatInterval: time.Hour}, true)
	job := f.seedJob("hosts/h1", 1)
	a := f.connect(hello("h1"))
	a.nextLimits() // after the welcome: unlimited
	f.start(job, "hosts/h1", 1)
	as, err := f.mgr.Assignment(mustJob(t, f, job), 1)
	if err != nil {
		t.Fatal(err)
	}
	setBandwidth(f, 0, 8<<20) // no observer: only the assignment's check can tell
	if err := f.mgr.Assign(context.Background(), "hosts/h1", as); err != nil {
		t.Fatal(err)
	}
	if got := a.next().GetAssignment(); got.GetMigrationServer().GetDownstreamBitsPerSecond() != 0 {
		t.Fatalf("assignment = %v", got)
	}
	if got := a.nextLimits(); got.GetDownstreamBitsPerSecond() != 8<<20 || got.GetMigrationServer() != "migrationServers/ms" {
		t.Fatalf("limits after the stale assignment = %v", got)
	}
}
