package consensus

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

func TestSingleNodeBootstrapsAndServesAtOnce(t *testing.T) {
	h := newHarness(t, slog.LevelInfo, nil)
	m := h.start("n1", true)
	ctx := context.Background()

	// Open waited for the sole voter to elect itself: no retry needed.
	res, err := m.node.Propose(ctx, putCluster(1))
	if err != nil {
		t.Fatalf("first write: %v", err)
	}
	if len(res.Names) != 1 || res.Names[0] != clusterName(1) {
		t.Fatalf("result names = %v, want [%s]", res.Names, clusterName(1))
	}
	if _, ok := m.ledger().Cluster(clusterName(1)); !ok {
		t.Fatal("write acknowledged but not in the ledger")
	}
	if err := m.node.LinearizableRead(ctx); err != nil {
		t.Fatalf("linearizable read on the leader: %v", err)
	}
	if got, want := m.node.LeaderAPIAddress(), "api-n1:7443"; got != want {
		t.Errorf("LeaderAPIAddress = %q, want %q", got, want)
	}
	members, err := m.node.Members()
	if err != nil {
		t.Fatal(err)
	}
	if len(members) != 1 || members[0].ID != "n1" || !members[0].Leader || members[0].Suffrage != "Voter" {
		t.Errorf("members = %+v, want n1 as the leading voter", members)
	}

	// A restart with Bootstrap still set resumes the state instead.
	if err := m.node.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if err := m.node.Shutdown(); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	if _, err := m.node.Propose(ctx, putCluster(2)); !errors.Is(err, ErrShutdown) {
		t.Fatalf("Propose after Shutdown: err = %v, want ErrShutdown", err)
	}
	h.open(m, true)
	if _, err := m.node.Propose(ctx, putCluster(2)); err != nil {
		t.Fatalf("write after restart: %v", err)
	}
	if !hasClusters(m, names(1, 3)) {
		t.Fatal("restarted node lost acknowledged writes")
	}
}

func TestProposeReportsLedgerErrors(t *testing.T) {
	h := newHarness(t, slog.LevelInfo, nil)
	m := h.start("n1", true)
	ctx := context.Background()
	if _, err := m.node.Propose(ctx, putCluster(1)); err != nil {
		t.Fatal(err)
	}
	dup := putCluster(1)
	dup.GetPutCluster().RequestId = "another request"
	res, err := m.node.Propose(ctx, dup)
	if err == nil || res.Err != err {
		t.Fatalf("duplicate cluster: err = %v, res.Err = %v; want the ledger's error in both", err, res.Err)
	}
	if errors.Is(err, ErrNotLeader) || errors.Is(err, ErrLeadershipLost) {
		t.Fatalf("ledger error %v looks like a consensus error", err)
	}
}

func TestProposeHonoursContext(t *testing.T) {
	h := newHarness(t, slog.LevelInfo, nil)
	m := h.start("n1", true)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := m.node.Propose(ctx, putCluster(1)); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: err = %v, want context.Canceled", err)
	}
	ctx, cancel = context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	if _, err := m.node.Propose(ctx, putCluster(1)); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("expired context: err = %v, want context.DeadlineExceeded", err)
	}
}

func TestConfigValidate(t *testing.T) {
	valid := Config{NodeID: "n1", DataDir: "/tmp/x", RaftBind: "127.0.0.1:0"}
	tests := []struct {
		name   string
		change func(*Config)
		want   string // substring of the error; "" means valid
	}{
		{"valid", func(*Config) {}, ""},
		{"no node id", func(c *Config) { c.NodeID = "" }, "NodeID"},
		{"no data dir", func(c *Config) { c.DataDir = "" }, "DataDir"},
		{"no bind", func(c *Config) { c.RaftBind = "" }, "RaftBind"},
		{"bad bind", func(c *Config) { c.RaftBind = "localhost" }, "RaftBind"},
		{"wildcard bind without advertise", func(c *Config) { c.RaftBind = "0.0.0.0:7000" }, "RaftAdvertise"},
		{"wildcard bind with advertise", func(c *Config) { c.RaftBind = ":7000"; c.RaftAdvertise = "10.0.0.1:7000" }, ""},
		{"bad advertise", func(c *Config) { c.RaftAdvertise = "nowhere" }, "RaftAdvertise"},
		{"negative timeout", func(c *Config) { c.ApplyTimeout = -1 }, "negative"},
		{"lease above heartbeat", func(c *Config) { c.LeaderLeaseTimeout = 2 * DefaultHeartbeatTimeout }, "LeaderLeaseTimeout"},
		{"huge batches", func(c *Config) { c.MaxAppendEntries = 5000 }, "MaxAppendEntries"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := valid
			tt.change(&cfg)
			err := cfg.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Validate() = %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("Validate() = %v, want an error naming %s", err, tt.want)
			}
		})
	}
}

// TestMembershipChangesCheckTheirTarget: a one-node cluster (plain TCP,
// as under --insecure, and mutual TLS) refuses a voter where nothing
// listens and the removal of an unknown id, and writes nothing for
// either; it keeps its leader and still writes.
func TestMembershipChangesCheckTheirTarget(t *testing.T) {
	for _, tc := range []struct {
		name string
		peer func(testing.TB) *PeerTLS
	}{
		{"tcp", func(testing.TB) *PeerTLS { return nil }},
		{"tls", testPeerTLS},
	} {
		t.Run(tc.name, func(t *testing.T) {
			peer := tc.peer(t)
			h := newHarness(t, slog.LevelInfo, func(c *Config) { c.TLS = peer })
			m := h.start("n1", true)
			ctx := context.Background()
			// The new leader records its address; let that land first.
			testkit.WaitFor(t, 5*time.Second, "n1's node record", func() bool { _, ok := m.ledger().Node("n1"); return ok })
			before := m.node.Stats()
			dead := testkit.FreeAddr(t)
			err := m.node.AddVoter(ctx, "n2", dead)
			var pe *PeerError
			if !errors.Is(err, ErrPeerUnverified) || !errors.As(err, &pe) || pe.Addr != dead {
				t.Fatalf("AddVoter at %s where nothing listens: %v, want a PeerError for it", dead, err)
			}
			if err := m.node.RemoveVoter(ctx, "n9"); !errors.Is(err, ErrUnknownMember) {
				t.Fatalf("RemoveVoter of an unknown id: %v, want ErrUnknownMember", err)
			}
			if after := m.node.Stats(); after.LastIndex != before.LastIndex {
				t.Fatalf("refused membership changes moved the log from %d to %d", before.LastIndex, after.LastIndex)
			}
			if members, err := m.node.Members(); err != nil || len(members) != 1 {
				t.Fatalf("members = %+v, %v; want n1 alone", members, err)
			}
			if _, err := m.node.Propose(ctx, putCluster(1)); err != nil {
				t.Fatalf("write after refused changes: %v", err)
			}
		})
	}
}

// TestDataFilesArePrivate: snapshots (a copy of the whole ledger) are
// written 0600 in 0700 directories like raft.db, whatever the umask
// lets hashicorp/raft's file store make, for a snapshot taken here and
// one a follower receives from its leader.
func TestDataFilesArePrivate(t *testing.T) {
	h := newHarness(t, slog.LevelWarn, func(c *Config) { c.TrailingLogs = 4 })
	m1 := h.start("n1", true)
	proposeAll(t, m1.node, 0, 20)
	if err := m1.node.Snapshot(); err != nil {
		t.Fatal(err)
	}
	m2 := h.start("n2", false)
	if err := m1.node.AddVoter(context.Background(), m2.id, m2.node.RaftAddress()); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 10*time.Second, "n2 installs the leader's snapshot", func() bool { return m2.node.Stats().LastSnapshotIndex > 0 })
	for _, m := range []*member{m1, m2} {
		snaps := 0
		err := filepath.WalkDir(m.dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			fi, err := d.Info()
			if err != nil {
				return err
			}
			want := os.FileMode(0o600)
			if d.IsDir() {
				want = 0o700
			}
			if d.Name() == "state.bin" {
				snaps++
			}
			if fi.Mode().Perm() != want {
				t.Errorf("%s: mode %v, want %v", p, fi.Mode().Perm(), want)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if snaps == 0 {
			t.Errorf("%s holds no snapshot", m.dir)
		}
	}
}
