package e2e

import (
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// TestFaultAgentKilledResumesByItself: the agent is killed (SIGKILL)
// halfway through the copy, with the upload beside it halfway too, and
// started again, with no operator action: the coordinator assigns the job
// again under the same epoch when the agent says hello without it, the
// copy resumes from the cache's checkpoints and the upload from its own,
// and the job completes in its first attempt, re-reading less than 20 % of
// what the cache held and uploading only what the volume lacked. The
// job's phase timings, recorded through the ledger, are the resumed run's
// and show in ferryctl job get.
func TestFaultAgentKilledResumesByItself(t *testing.T) {
	t.Parallel() // see doc.go
	w := newWorld(t)
	src := testenv.NewTestVM(t, w.lv, testenv.VMOptions{RandomBytes: 40 << 20})
	w.setBandwidth(nil, proto.String(eightMiBps))
	name := w.createJob(w.spec(w.sourceVM(w.source, src.Name), nil))
	w.waitJob(name, 2*time.Minute, "half the root disk in the cache", func(j *ferryv1.MigrationJob) bool {
		d := disk(j, "vda")
		return terminal(j) || d.GetTotalBytes() > 0 && d.GetDoneBytes()*2 >= d.GetTotalBytes()
	})
	w.f.agents[w.host].kill()
	killedAt := time.Now()
	cacheImage := filepath.Join(w.cacheDir, path.Base(name), "vda.qcow2")
	testkit.WaitFor(t, 30*time.Second, "the cache server to exit", func() bool {
		return exec.Command("pgrep", "-f", "qemu-nbd.*"+path.Base(name)).Run() != nil
	})
	before := allocated(t, cacheImage)
	w.setBandwidth(nil, proto.String(""))
	agent := w.f.startAgent(w.host, w.cacheDir)
	j := w.waitJob(name, 3*time.Minute, "the job to end", terminal)
	if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED || j.GetAttempt() != 1 || j.GetEpoch() != 1 {
		t.Fatalf("job ended %s (attempt %d, epoch %d): %s", j.GetState(), j.GetAttempt(), j.GetEpoch(), j.GetReason())
	}
	for _, d := range src.Disks {
		compare(t, d.Path, w.volume(name, d.Target))
	}
	c := copiedOf(t, agent, "vda")
	checkResumedUpload(t, w, agent, name, j, c)
	reread := before - c.skipped
	t.Logf("agent killed with %d bytes of vda in the cache; restarted, the job resumed by itself and SUCCEEDED %v after the kill, "+
		"skipping %d and reading %d (re-read %d, %.1f %%)", before, time.Since(killedAt).Round(100*time.Millisecond),
		c.skipped, c.read, reread, 100*float64(reread)/float64(before))
	if before == 0 || float64(reread) >= 0.2*float64(before) {
		t.Errorf("the resumed job re-read %d of the %d bytes already in the cache (goal < 20 %%)", reread, before)
	}
	if jt := src.JobType(t); jt != "None" {
		t.Errorf("the killed agent's backup job is still on the source: %s", jt)
	}
	if l := leftovers(src); len(l) > 0 {
		t.Errorf("backup files left on the source: %v", l)
	}
}

var resumedLine = regexp.MustCompile(`resuming the upload.* disk=vda .*chunks_uploaded=(\d+) chunks=(\d+)`)

// checkResumedUpload checks that the restarted agent resumed the upload of
// vda from what the killed one had put on the volume, and that the job's
// phase timings say so, in the API and in ferryctl job get.
func checkResumedUpload(t *testing.T, w *world, agent *proc, name string, j *ferryv1.MigrationJob, c copied) {
	t.Helper()
	var uploaded int
	for _, l := range agent.lines("resuming the upload") {
		if m := resumedLine.FindStringSubmatch(l); m != nil {
			uploaded, _ = strconv.Atoi(m[1])
		}
	}
	if uploaded == 0 {
		t.Errorf("the restarted agent did not resume the upload of vda from the volume (log: %q)", agent.lines("resuming the upload"))
	}
	phases := map[ferryv1.MigrationJobPhase]*ferryv1.PhaseTiming{}
	for _, p := range j.GetPhaseTimings() {
		if p.GetEndTime() == nil {
			t.Errorf("phase %s of the finished job has no end", p.GetPhase())
		}
		phases[p.GetPhase()] = p
	}
	conv, up := phases[ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONVERTING], phases[ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_UPLOADING]
	if conv == nil || up == nil || phases[ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONFIGURING] == nil {
		t.Fatalf("phase timings %v lack a phase", j.GetPhaseTimings())
	}
	// CONVERTING counts what the cache held already (vda's data and
	// vdb's); UPLOADING only what this run wrote, which the volumes did
	// not hold.
	if vda := c.read + c.skipped; conv.GetBytes() <= vda || up.GetBytes() <= 0 || up.GetBytes() >= conv.GetBytes() {
		t.Errorf("phase bytes: CONVERTING %d (want more than vda's %d), UPLOADING %d (want less: %d chunks of vda were on the volume)",
			conv.GetBytes(), vda, up.GetBytes(), uploaded)
	}
	if up.GetStartTime().AsTime().After(conv.GetEndTime().AsTime()) {
		t.Errorf("UPLOADING began at %v, after CONVERTING ended at %v", up.GetStartTime().AsTime(), conv.GetEndTime().AsTime())
	}
	out, err := w.f.ferryctl("job", "get", name)
	if err != nil || !strings.Contains(out, "PHASE") || !strings.Contains(out, "UPLOADING") {
		t.Errorf("ferryctl job get shows no phase timings (%v):\n%s", err, out)
	}
	out, err = w.f.ferryctl("job", "get", name, "-o", "json")
	if err != nil || !strings.Contains(out, "phaseTimings") && !strings.Contains(out, "phase_timings") {
		t.Errorf("ferryctl job get -o json shows no phase timings (%v):\n%s", err, out)
	}
	t.Logf("the restarted agent found %d chunks of vda on the volume; timings %v", uploaded, j.GetPhaseTimings())
}
