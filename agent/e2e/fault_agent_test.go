package e2e

import (
	"os/exec"
	"path"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// TestFaultAgentKilledResumesByItself: the agent is killed (SIGKILL)
// halfway through the copy and started again, with no operator action: the
// coordinator assigns the job again under the same epoch when the agent
// says hello without it, the copy resumes from the cache's checkpoints and
// the job completes in its first attempt, re-reading less than 20 % of
// what the cache held.
func TestFaultAgentKilledResumesByItself(t *testing.T) {
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
