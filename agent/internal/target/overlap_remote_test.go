package target

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/agent/internal/runner"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// The upload onto another host's volume runs beside the copy as the
// local one does: chunks are on h2's volume (through its TLS export)
// before the copy has ended, every byte goes through the migration
// server's upstream bucket, each round after the first is fenced, the
// volume is read back as it goes, and it ends identical to the source.
func TestUploadOntoAnotherHostOverlapsTheCopy(t *testing.T) {
	o := newOverlapJob(t)
	o.placeOnH2(t)
	o.down = 8 << 20 * 8 // the copy takes about 3 s
	o.up = 16 << 20 * 8  // and the upload may keep up with it
	var duringCopy int
	o.src.afterCopy = func(*runner.Job) { duringCopy = uploadedChunks(t, o.uploadCheckpoint()) }
	res, _ := o.start(t)
	r := waitResult(t, res)
	if r.GetOutcome() != agentv1.JobOutcome_JOB_OUTCOME_SUCCEEDED {
		t.Fatalf("job %s: %s", r.GetOutcome(), r.GetReason())
	}
	o.hosts.worker.Close() // h2's qemu-nbd lets go of the volume
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "qcow2", o.sourcePath, o.volume())
	if duringCopy == 0 {
		t.Errorf("no chunk was on h2's volume when the copy ended")
	}
	conv, up := timing(t, r, converting), timing(t, r, uploading)
	if !up.GetStartTime().AsTime().Before(conv.GetEndTime().AsTime()) {
		t.Errorf("UPLOADING began at %v, after CONVERTING ended at %v", up.GetStartTime().AsTime(), conv.GetEndTime().AsTime())
	}
	o.target.mu.Lock()
	lim := o.target.upstream
	o.target.mu.Unlock()
	if lim.Rate() != o.up || lim.Granted() < overlapData || up.GetBytes() != overlapData {
		t.Errorf("upstream bucket at %d bits/s let %d bytes through; UPLOADING wrote %d; want %d bits/s and %d bytes of data",
			lim.Rate(), lim.Granted(), up.GetBytes(), o.up, overlapData)
	}
	for _, d := range r.GetDisks() {
		if !d.GetVerified() {
			t.Errorf("disk %s not verified", d.GetSourceDisk())
		}
	}
	o.mu.Lock()
	fences := slices.Clone(o.fences)
	o.mu.Unlock()
	rounds := 0
	for _, f := range fences {
		if strings.HasPrefix(f, "upload round onto volume ") {
			rounds++
		}
	}
	if len(fences) == 0 || !strings.HasPrefix(fences[0], "upload onto volume ") || rounds == 0 {
		t.Errorf("fenced writes on the migration server: %q; want the first write, then each further round", fences)
	}
	if asked := o.hosts.relay.asked; len(asked) != 1 || asked[0] != agentv1.TargetAction_TARGET_ACTION_PREPARE_VOLUMES {
		t.Errorf("asked h2 %v, want one PREPARE_VOLUMES", asked)
	}
	t.Logf("chunks on h2's volume when the copy ended: %d; %d rounds fenced; granted %d bytes; timings %v",
		duringCopy, rounds, lim.Granted(), r.GetPhaseTimings())
}

// The migration server's agent stopped mid-overlap, with part of the disk
// in the cache and part of that on h2's volume, resumes both on its next
// start: h2 serves the same volume again (not created anew), and the
// chunks its upload checkpoint holds, of this very cache image, are not
// sent again.
func TestOverlapOntoAnotherHostResumesAfterTheAgentStopped(t *testing.T) {
	o := newOverlapJob(t)
	o.placeOnH2(t)
	o.src.gate, o.src.gateAt = make(chan struct{}), overlapSize/2
	res, stop := o.start(t)
	testkit.WaitFor(t, time.Minute, "data chunks on h2's volume", func() bool { return uploadedDataChunks(t, o.uploadCheckpoint()) >= 4 })
	stop()
	atStop := uploadedDataChunks(t, o.uploadCheckpoint())
	select {
	case r := <-res.ch:
		t.Fatalf("the stopped agent reported a result: %v", r)
	default:
	}

	o.src.gate = nil
	res, _ = o.start(t)
	r := waitResult(t, res)
	if r.GetOutcome() != agentv1.JobOutcome_JOB_OUTCOME_SUCCEEDED {
		t.Fatalf("resumed job %s: %s", r.GetOutcome(), r.GetReason())
	}
	o.hosts.worker.Close()
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "qcow2", o.sourcePath, o.volume())
	p := o.hosts.relay.prepare
	if len(p) != 2 || !p[0].GetCreated() || p[1].GetCreated() {
		t.Errorf("exports %v: want the volume created, then served again as it was", p)
	}
	up := timing(t, r, uploading)
	t.Logf("%d data chunks on h2's volume at the stop; the resumed run uploaded %d of %d data bytes", atStop, up.GetBytes(), overlapData)
	if want := overlapData - int64(atStop)*dataRun; up.GetBytes() != want {
		t.Errorf("the resumed upload wrote %d bytes, want %d: %d data chunks were on h2's volume already", up.GetBytes(), want, atStop)
	}
}
