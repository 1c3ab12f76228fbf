package e2e

import (
	"errors"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// fourMiBps is 4 MiB/s in the API's integer Kbps.
const fourMiBps = "33554Kbps"

func (w *world) setGrace(d time.Duration) {
	_, err := w.f.client.Settings().UpdateSettings(ctx(w.t, 10*time.Second), &ferryv1.UpdateSettingsRequest{
		Settings:   &ferryv1.Settings{AgentGracePeriod: durationpb.New(d)},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"agent_grace_period"}}})
	must(w.t, err)
}

// targetWrites lists what a job made on the target: its volume directory
// and files (with their modification times) and its domain.
func (w *world) targetWrites(job, vmName string) []string {
	var out []string
	dir := filepath.Join(w.storageDir, path.Base(job))
	_ = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil {
			out = append(out, p+" (mtime "+fi.ModTime().Format(time.RFC3339Nano)+")")
		}
		return nil
	})
	if names, err := w.lv.TryVirsh("list", "--all", "--name"); err == nil {
		for _, n := range strings.Fields(names) {
			if n == vmName {
				out = append(out, "domain "+n)
			}
		}
	}
	return out
}

// jobLines are the agent's log lines about job that contain substr.
func jobLines(p *proc, job, substr string) []string {
	var out []string
	for _, l := range p.lines(substr) {
		if strings.Contains(l, job+" ") {
			out = append(out, l)
		}
	}
	return out
}

// partitionedJob starts a job of a new VM and black-holes the link between
// the agent and the coordinator once a tenth of its root disk is copied.
func (w *world) partitionedJob(rate string) (name, target string, at time.Time) {
	src := testenv.NewTestVM(w.t, w.lv, testenv.VMOptions{RandomBytes: 40 << 20})
	w.setBandwidth(nil, proto.String(rate))
	spec := w.spec(w.sourceVM(w.source, src.Name), nil)
	name = w.createJob(spec)
	w.waitJob(name, 2*time.Minute, "a tenth of the root disk in the cache", func(j *ferryv1.MigrationJob) bool {
		d := disk(j, "vda")
		return terminal(j) || d.GetTotalBytes() > 0 && d.GetDoneBytes()*10 >= d.GetTotalBytes()
	})
	if j := w.job(name); terminal(j) {
		w.t.Fatalf("job ended %s before the partition: %s", j.GetState(), j.GetReason())
	}
	w.coordinatorProxy.BlackHole()
	return name, spec.GetTarget().GetVmName(), time.Now()
}

// waitLost waits until the coordinator failed the job as agent lost.
func (w *world) waitLost(name string) *ferryv1.MigrationJob {
	w.t.Helper()
	j := w.waitJob(name, 90*time.Second, "the coordinator to fail the job", terminal)
	if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED || !strings.Contains(j.GetReason(), "agent lost") {
		w.t.Fatalf("job ended %s (%q), want FAILED, agent lost", j.GetState(), j.GetReason())
	}
	return j
}

// healAndCheck heals the partition, waits until the agent is back and its
// stale job has ended there, and checks that nothing was written to the
// target and the ledger still says FAILED, agent lost.
func (w *world) healAndCheck(name, target string) {
	t := w.t
	t.Helper()
	before := w.targetWrites(name, target)
	storage, err := os.Stat(w.storageDir)
	must(t, err)
	w.coordinatorProxy.Heal()
	agent := w.f.agents[w.host]
	testkit.WaitFor(t, 60*time.Second, "the stale job to end on the agent", func() bool {
		return len(jobLines(agent, name, "job finished")) > 0
	})
	testkit.WaitFor(t, 30*time.Second, "the agent to be connected again", func() bool {
		h, err := w.f.client.TargetInventory().GetHost(ctx(t, 2*time.Second), &ferryv1.GetHostRequest{Name: "hosts/" + w.host})
		return err == nil && h.GetConnected()
	})
	time.Sleep(3 * time.Second) // anything the stale agent still had in flight
	// The upload follows the copy, so what the leader confirmed before the
	// partition may be on the target when it heals (before); the job that
	// ended undoes it, and nothing of it is left (after).
	after := w.targetWrites(name, target)
	if len(after) > 0 {
		t.Errorf("the stale job left the target written after the heal: %v (before the heal: %v)", after, before)
	}
	if _, err := os.Stat(filepath.Join(w.storageDir, path.Base(name))); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the job's directory in primary storage %s after the heal: %v, want none", w.storageDir, err)
	}
	if j := w.job(name); j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED || !strings.Contains(j.GetReason(), "agent lost") {
		t.Errorf("after the heal the job is %s (%q), want still FAILED, agent lost", j.GetState(), j.GetReason())
	}
	t.Logf("after the heal: no volume, no domain %s (before it: %d paths, storage mtime %s); the agent ended the job: %s",
		target, len(before), storage.ModTime().Format(time.RFC3339Nano), lastOf(jobLines(agent, name, "job finished")))
}

// linesSince are the log lines stamped (time=...) at or after t.
func linesSince(lines []string, t time.Time) []string {
	var out []string
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) == 0 || !strings.HasPrefix(f[0], "time=") {
			continue
		}
		if at, err := time.Parse(time.RFC3339Nano, strings.TrimPrefix(f[0], "time=")); err == nil && !at.Before(t) {
			out = append(out, l)
		}
	}
	return out
}

func lastOf(lines []string) string {
	if len(lines) == 0 {
		return ""
	}
	return lines[len(lines)-1]
}

// TestFaultAgentPartitioned black-holes the TCP link between the agent and
// the coordinator (a proxy that stops moving bytes, no FIN or RST) past the
// 8 s grace period, twice:
//
//  1. The operator lowers the grace period from 5 min to 8 s during the
//     partition, so the agent cannot learn it and still believes 5 min: it
//     keeps copying and reaches UPLOADING, where the fence holds the first
//     target write until the leader confirms the assignment. The
//     coordinator fails the job (agent lost); once the partition heals,
//     the leader cancels the job (or refuses the write) and nothing
//     reaches the target.
//  2. Now the agent knows the 8 s (from its heartbeats or Welcome): it
//     stops the job itself when it has not heard from a leader for that
//     long, before the coordinator fails it.
//
// Afterwards the second job is restarted and completes under the new
// epoch, every target write confirmed by the leader first.
func TestFaultAgentPartitioned(t *testing.T) {
	t.Parallel() // see doc.go
	const grace = 8 * time.Second
	w := newWorldWith(t, worldOptions{coordinatorProxy: true})
	agent := w.f.agents[w.host]

	// 1: the grace period lowered during the partition; the fence holds
	// the write.
	name1, target1, at1 := w.partitionedJob(eightMiBps)
	w.setGrace(grace)
	j1 := w.waitLost(name1)
	t.Logf("job 1 FAILED %v after the partition: %s", time.Since(at1).Round(100*time.Millisecond), j1.GetReason())
	testkit.WaitFor(t, 60*time.Second, "job 1's first target write to wait for the leader", func() bool {
		return len(jobLines(agent, name1, "waiting for the leader to confirm the assignment")) > 0
	})
	t.Logf("job 1 held by the fence: %s", jobLines(agent, name1, "waiting for the leader to confirm")[0])
	// The upload follows the copy, so writes confirmed before the
	// partition began are expected; none may be confirmed after.
	if l := linesSince(jobLines(agent, name1, "assignment confirmed before a target write"), at1); len(l) > 0 {
		t.Fatalf("a write of job 1 was confirmed during the partition: %v", l)
	}
	w.healAndCheck(name1, target1)
	refused := jobLines(agent, name1, "target write refused by the leader")
	cancelled := jobLines(agent, name1, "cancelling job")
	if len(refused)+len(cancelled) == 0 {
		t.Errorf("job 1 ended on the agent neither by a refused write nor by a cancellation")
	}
	t.Logf("job 1 on the agent after the heal: %d refused write(s), %d cancellation(s)", len(refused), len(cancelled))

	// 2: the agent knows the grace period and stops the job itself.
	testkit.WaitFor(t, 30*time.Second, "a session that told the agent the 8 s grace period", func() bool {
		return len(agent.lines("grace="+grace.String())) > 0
	})
	name2, target2, at2 := w.partitionedJob(fourMiBps)
	testkit.WaitFor(t, 60*time.Second, "the agent to stop job 2 itself", func() bool {
		return len(agent.lines("cut off longer than the grace period; stopped jobs")) > 0
	})
	stoppedAfter := time.Since(at2)
	j2 := w.waitLost(name2)
	lostAfter := time.Since(at2)
	t.Logf("job 2: the agent stopped it %v after the partition, the coordinator failed it after %v: %s",
		stoppedAfter.Round(100*time.Millisecond), lostAfter.Round(100*time.Millisecond), j2.GetReason())
	if stoppedAfter > lostAfter {
		t.Errorf("the agent stopped job 2 after the coordinator failed it (%v > %v)", stoppedAfter, lostAfter)
	}
	// The agent counts from the last message it had, up to a heartbeat
	// interval (2 s) before the partition began.
	if stoppedAfter < grace-2500*time.Millisecond {
		t.Errorf("the agent stopped job 2 %v after the partition, well before the %v grace period", stoppedAfter, grace)
	}
	w.healAndCheck(name2, target2)

	// The healed agent takes a new assignment and writes under its epoch.
	w.setBandwidth(nil, proto.String(""))
	restarted := time.Now()
	_, err := w.f.client.Jobs().RestartMigrationJob(ctx(t, 10*time.Second), &ferryv1.RestartMigrationJobRequest{Name: name2})
	must(t, err)
	j := w.waitJob(name2, 3*time.Minute, "the restarted job 2 to end", terminal)
	if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
		t.Fatalf("restarted job 2 ended %s: %s", j.GetState(), j.GetReason())
	}
	confirmed := linesSince(jobLines(agent, name2, "assignment confirmed before a target write"), restarted)
	// Per disk: create, the first upload and every further round; then the
	// domain.
	kinds := map[string]int{}
	for _, l := range confirmed {
		for _, k := range []string{`write="create volume `, `write="upload onto volume `, `write="upload round onto volume `, `write="define`} {
			if strings.Contains(l, k) {
				kinds[k]++
			}
		}
	}
	if n := len(j.GetDisks()); kinds[`write="create volume `] != n || kinds[`write="upload onto volume `] != n || kinds[`write="define`] != 1 {
		t.Errorf("target writes confirmed for the restarted job 2: %v; want per disk (%d) one create and one first upload, and one domain: %v", kinds, n, confirmed)
	}
	for _, l := range confirmed {
		if !strings.Contains(l, "epoch=2") {
			t.Errorf("confirmed write not under epoch 2: %s", l)
		}
	}
	t.Logf("restarted job 2 SUCCEEDED with %d writes, each confirmed by the leader first", len(confirmed))
}
