package e2e

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/ferry-v2v/ferry/agent/internal/source/vmware/vcsimtest"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"
)

// BenchmarkPreparing (issue 14): the Debian guest (testenv.DebianGuest)
// migrated from the vCenter simulator with conversion on: PREPARING's
// time and its share of the whole job, against virt-v2v-in-place run by
// hand on a qcow2 overlay of the same image, side by side in one run.
// Minutes each under TCG: it runs once, whatever b.N.
func BenchmarkPreparing(b *testing.B) {
	testenv.LibguestfsTCG(b)
	w := newWorld(b)
	sim := vcsimtest.Start(b)
	name, _ := w.vmwareDebianJob(sim, &ferryv1.MigrationOptions{AutoStart: proto.Bool(false)})
	job := w.waitJob(name, 30*time.Minute, "the job to end", terminal)
	if job.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
		b.Fatalf("job ended %s: %s", job.GetState(), job.GetReason())
	}
	var prep time.Duration
	for _, pt := range job.GetPhaseTimings() {
		if pt.GetPhase() == ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_PREPARING {
			prep = pt.GetEndTime().AsTime().Sub(pt.GetStartTime().AsTime())
		}
	}
	if prep == 0 {
		b.Fatalf("the job has no PREPARING phase: %v", job.GetPhaseTimings())
	}
	total := job.GetDuration().AsDuration()

	overlay := filepath.Join(b.TempDir(), "by-hand.qcow2")
	testenv.Run(b, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", testenv.DebianGuest(b), overlay)
	start := time.Now()
	if out, err := exec.Command("virt-v2v-in-place", "-i", "disk", "-if", "qcow2", overlay).CombinedOutput(); err != nil {
		b.Fatalf("virt-v2v-in-place by hand: %v\n%s", err, out)
	}
	hand := time.Since(start)
	fmt.Printf("    load average %s\n", loadAverage())
	fmt.Printf("    PREPARING %v of the whole job's %v (%.0f %%); virt-v2v-in-place by hand on the same image %v (PREPARING/by hand %.2f)\n",
		prep.Round(100*time.Millisecond), total.Round(100*time.Millisecond), 100*prep.Seconds()/total.Seconds(),
		hand.Round(100*time.Millisecond), prep.Seconds()/hand.Seconds())
	b.ReportMetric(prep.Seconds(), "preparing-s")
	b.ReportMetric(100*prep.Seconds()/total.Seconds(), "preparing-%-of-job")
	b.ReportMetric(hand.Seconds(), "by-hand-s")
}
