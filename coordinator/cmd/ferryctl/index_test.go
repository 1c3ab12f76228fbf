package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/coordinator/internal/testcluster"
)

// TestFerryctlIndexFile: with FERRY_INDEX_FILE, one run of ferryctl saves
// the Raft index of its write, and the next run, at a follower, reads at
// least that write. An index the cluster has not reached makes a read
// fail UNAVAILABLE, naming ferry-min-index, instead of answering older.
func TestFerryctlIndexFile(t *testing.T) {
	if testing.Short() {
		t.Skip("three-node cluster")
	}
	c := testcluster.Start(t, 3)
	leader := c.Leader(10 * time.Second)
	follower := c.Followers()[0]
	file := filepath.Join(t.TempDir(), "index")
	x := &cli{t: t, server: follower.Addr(), tlsDir: c.TLSDir, env: map[string]string{envIndexFile: file}}

	x.json("settings", "update", "--job-parallelism", "17")
	saved, err := readIndexFile(file)
	if err != nil || saved == 0 {
		t.Fatalf("index file after the update: %d, %v; want the write's index", saved, err)
	}
	if applied := leader.Server.Node().Stats().AppliedIndex; saved > applied {
		t.Fatalf("saved index %d is past the leader's applied index %d", saved, applied)
	}
	if got := path(x.json("settings", "get"), "job_parallelism"); got != float64(17) {
		t.Fatalf("settings get at the follower after the update = %v, want 17", got)
	}

	ahead := saved + 1_000_000
	if err := os.WriteFile(file, []byte(strconv.FormatUint(ahead, 10)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := x.run("settings", "get")
	if r.code != exitError || !strings.Contains(r.err, "UNAVAILABLE") || !strings.Contains(r.err, "ferry-min-index") ||
		!strings.Contains(r.err, strconv.FormatUint(ahead, 10)) {
		t.Fatalf("settings get with index %d saved: exit %d, %q; want UNAVAILABLE naming ferry-min-index and the index", ahead, r.code, r.err)
	}
	if got, _ := readIndexFile(file); got != ahead {
		t.Fatalf("index file = %d after a failed read, want %d kept", got, ahead)
	}
}
