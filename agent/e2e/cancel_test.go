package e2e

import (
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

const (
	converting  = ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONVERTING
	uploading   = ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_UPLOADING
	configuring = ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONFIGURING
)

// TestCancelInEachPhase: a job cancelled while it copies to the cache or
// uploads, or failing while it defines the VM, leaves no target volume,
// no target domain and no backup job or file on the source.
func TestCancelInEachPhase(t *testing.T) {
	t.Parallel() // see doc.go
	w := newWorld(t)
	for _, tc := range []struct {
		phase    ferryv1.MigrationJobPhase
		up, down string
	}{
		{converting, "", eightMiBps},
		{uploading, eightMiBps, ""},
	} {
		t.Run(tc.phase.String(), func(t *testing.T) {
			src := testenv.NewTestVM(t, w.lv, testenv.VMOptions{RandomBytes: 40 << 20})
			w.setBandwidth(proto.String(tc.up), proto.String(tc.down))
			spec := w.spec(w.sourceVM(w.source, src.Name), nil)
			name := w.createJob(spec)
			j := w.waitJob(name, 2*time.Minute, "copying in "+tc.phase.String(), func(j *ferryv1.MigrationJob) bool {
				return terminal(j) || j.GetPhase() == tc.phase && disk(j, "vda").GetDoneBytes() > 0
			})
			if terminal(j) {
				t.Fatalf("job ended %s before it could be cancelled in %s", j.GetState(), tc.phase)
			}
			_, err := w.f.client.Jobs().CancelMigrationJob(ctx(t, 10*time.Second), &ferryv1.CancelMigrationJobRequest{Name: name})
			must(t, err)
			if j := w.job(name); j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_CANCELLED {
				t.Fatalf("cancelled job is %s", j.GetState())
			}
			w.expectNothingLeft(src, name, spec.GetTarget().GetVmName())
		})
	}
	t.Run(configuring.String(), func(t *testing.T) {
		// Defining the VM fails: a domain of the target's name that Ferry
		// did not make exists. The job fails in CONFIGURING and rolls back.
		src := testenv.NewTestVM(t, w.lv, testenv.VMOptions{})
		w.setBandwidth(proto.String(""), proto.String(""))
		spec := w.spec(w.sourceVM(w.source, src.Name), nil)
		squatter := testenv.NewTestVM(t, w.lv, testenv.VMOptions{Name: spec.GetTarget().GetVmName()})
		name := w.createJob(spec)
		j := w.waitJob(name, 2*time.Minute, "the job to end", terminal)
		if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED || j.GetPhase() != configuring {
			t.Fatalf("job ended %s in %s: %s", j.GetState(), j.GetPhase(), j.GetReason())
		}
		if !strings.Contains(j.GetReason(), squatter.Name) {
			t.Errorf("reason does not name the domain in the way: %q", j.GetReason())
		}
		w.expectVolumesGone(name)
		if st := squatter.State(t); st != "running" {
			t.Errorf("the domain that was there first is %s; Ferry must leave it alone", st)
		}
		w.expectSourceClean(src)
	})
}

func (w *world) expectNothingLeft(src *testenv.TestVM, job, vmName string) {
	w.t.Helper()
	w.expectVolumesGone(job)
	if _, err := w.lv.TryVirsh("domstate", vmName); err == nil {
		w.t.Errorf("target domain %s exists after cancel", vmName)
	}
	w.expectSourceClean(src)
}

func (w *world) expectVolumesGone(job string) {
	w.t.Helper()
	dir := filepath.Join(w.storageDir, path.Base(job))
	// A cancel during the upload has been seen to take 30 s to roll back
	// on a loaded machine (a 30 s bound on closing the upload's NBD
	// connection or its qemu-nbd; cause not found yet): the wait allows
	// for it and logs how long it took.
	start := time.Now()
	testkit.WaitFor(w.t, 90*time.Second, "the target volumes to go", func() bool {
		entries, err := os.ReadDir(dir)
		return os.IsNotExist(err) || err == nil && len(entries) == 0
	})
	w.t.Logf("the target volumes of %s went %v after the job ended", job, time.Since(start).Round(100*time.Millisecond))
}

func (w *world) expectSourceClean(src *testenv.TestVM) {
	w.t.Helper()
	testkit.WaitFor(w.t, 30*time.Second, "the source backup job and files to go", func() bool {
		return src.JobType(w.t) == "None" && len(leftovers(src)) == 0
	})
}
