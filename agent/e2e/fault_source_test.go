package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// startCutJob starts a bandwidth-limited job of a VM with 40 MiB of random
// data behind the world's source proxy and waits until a quarter of its
// root disk is in the cache.
func startCutJob(t *testing.T, w *world) (*testenv.TestVM, string) {
	t.Helper()
	src := testenv.NewTestVM(t, w.lv, testenv.VMOptions{RandomBytes: 40 << 20})
	w.setBandwidth(nil, proto.String(eightMiBps))
	name := w.createJob(w.spec(w.sourceVM(w.source, src.Name), nil))
	w.waitJob(name, 2*time.Minute, "a quarter of the root disk in the cache", func(j *ferryv1.MigrationJob) bool {
		d := disk(j, "vda")
		return terminal(j) || d.GetTotalBytes() > 0 && d.GetDoneBytes()*4 >= d.GetTotalBytes()
	})
	return src, name
}

// TestFaultSourceSSHCutRetried: the SSH connection to the source is cut
// mid-copy for 6 s (the proxy closes every connection and refuses new
// ones); the agent reconnects with backoff within its 60 s retry budget,
// reattaches the backup and the job completes with identical disks and
// nothing left on the source. Then a job starts while the source is cut:
// it waits for the source and completes once the link is back.
func TestFaultSourceSSHCutRetried(t *testing.T) {
	t.Parallel() // see doc.go
	w := newWorldWith(t, worldOptions{sourceProxy: true, agentArgs: []string{"--source-retry-budget", "60s"}})
	src, name := startCutJob(t, w)
	w.sourceProxy.Cut()
	cutAt := time.Now()
	time.Sleep(6 * time.Second)
	if j := w.job(name); terminal(j) {
		t.Fatalf("job ended %s while the source was cut for %v: %s", j.GetState(), time.Since(cutAt), j.GetReason())
	}
	w.sourceProxy.Heal()
	j := w.waitJob(name, 3*time.Minute, "the job to end", terminal)
	if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
		t.Fatalf("job ended %s: %s", j.GetState(), j.GetReason())
	}
	for _, d := range src.Disks {
		compare(t, d.Path, w.volume(name, d.Target))
	}
	agent := w.f.agents[w.host]
	dropped, reconnected := agent.lines("SSH connection to the source dropped"), agent.lines("reconnected to the source")
	if len(dropped) == 0 || len(reconnected) == 0 {
		t.Errorf("the agent logged %d dropped and %d reconnected lines, want both", len(dropped), len(reconnected))
	}
	t.Logf("cut for 6 s mid-copy: %d drop(s) seen, reconnected: %s", len(dropped), strings.Join(reconnected, " | "))
	if jt := src.JobType(t); jt != "None" {
		t.Errorf("the source VM still has a %s job", jt)
	}
	if l := leftovers(src); len(l) > 0 {
		t.Errorf("backup files left on the source: %v", l)
	}

	src2 := testenv.NewTestVM(t, w.lv, testenv.VMOptions{})
	spec := w.spec(w.sourceVM(w.source, src2.Name), nil)
	w.sourceProxy.Cut()
	name2 := w.createJob(spec)
	time.Sleep(5 * time.Second)
	if j := w.job(name2); terminal(j) {
		t.Fatalf("a job started while the source was cut ended %s: %s", j.GetState(), j.GetReason())
	}
	w.sourceProxy.Heal()
	j2 := w.waitJob(name2, 3*time.Minute, "the second job to end", terminal)
	if j2.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
		t.Fatalf("a job started while the source was cut ended %s: %s", j2.GetState(), j2.GetReason())
	}
	for _, d := range src2.Disks {
		compare(t, d.Path, w.volume(name2, d.Target))
	}
	t.Logf("a job started while the source was cut: %s", lastOf(jobLines(agent, name2, "connected to the source after retrying")))
	if len(jobLines(agent, name2, "connected to the source after retrying")) != 1 {
		t.Error("the second job did not retry its first connection")
	}
}

// TestFaultSourceSSHCutPastRetryBudget: the SSH connection is cut
// mid-copy for longer than the 5 s retry budget. The job fails with the
// reason; the backup it could not end stays on the unreachable source
// while the agent crashes (SIGKILL); once the link is back, the agent's
// next start ends the backup job and removes its socket and scratch files.
func TestFaultSourceSSHCutPastRetryBudget(t *testing.T) {
	t.Parallel() // see doc.go
	w := newWorldWith(t, worldOptions{sourceProxy: true, agentArgs: []string{"--source-retry-budget", "5s"}})
	src, name := startCutJob(t, w)
	w.sourceProxy.Cut()
	cutAt := time.Now()
	j := w.waitJob(name, 2*time.Minute, "the job to end", terminal)
	failedAfter := time.Since(cutAt)
	if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED {
		t.Fatalf("job ended %s, want FAILED: %s", j.GetState(), j.GetReason())
	}
	for _, want := range []string{"source connection lost", "retry budget of 5s", "disk vda"} {
		if !strings.Contains(j.GetReason(), want) {
			t.Errorf("reason %q lacks %q", j.GetReason(), want)
		}
	}
	t.Logf("FAILED %v after the cut: %s", failedAfter.Round(100*time.Millisecond), j.GetReason())
	if failedAfter < 5*time.Second || failedAfter > 60*time.Second {
		t.Errorf("the job failed %v after the cut, want just past the 5 s budget", failedAfter)
	}
	if jt := src.JobType(t); jt == "None" {
		t.Fatal("the backup job ended although the source was unreachable: the test cannot show the cleanup")
	}
	records, _ := filepath.Glob(filepath.Join(w.f.agentDi[w.host], "source-cleanup", "ferry-backup-*.json"))
	if len(records) != 1 {
		t.Fatalf("cleanup records %v, want the one of the failed job's backup", records)
	}
	if rec, _ := os.ReadFile(records[0]); strings.Contains(string(rec), "PRIVATE KEY") {
		t.Errorf("cleanup record %s holds the private key in clear", records[0])
	}
	w.f.agents[w.host].kill()
	w.sourceProxy.Heal()
	agent := w.f.startAgent(w.host, w.cacheDir)
	testkit.WaitFor(t, 60*time.Second, "the restarted agent to end the leftover backup and drop its record", func() bool {
		_, err := os.Stat(records[0])
		return os.IsNotExist(err)
	})
	if jt := src.JobType(t); jt != "None" {
		t.Errorf("the source VM still has a %s job", jt)
	}
	if l := leftovers(src); len(l) > 0 {
		t.Errorf("backup files left on the source: %v", l)
	}
	if l := agent.lines("ended a backup a failed or crashed job left"); len(l) != 1 {
		t.Errorf("the restarted agent logged %d leftover cleanups, want 1", len(l))
	}
	if _, err := os.ReadFile(filepath.Join(w.f.agentDi[w.host], "source-cleanup", "seal.key")); err != nil {
		t.Errorf("no seal key for the cleanup records: %v", err)
	}
}
