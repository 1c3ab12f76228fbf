package vmware

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/agent/internal/source/vmware/vcsimtest"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"
)

// newCutMigration is a migration whose driver reaches the simulator
// through a proxy the test can cut, the copy slowed to a few seconds so
// the cut lands mid-export, and NFC downloads honouring byte ranges.
func newCutMigration(t *testing.T, budget time.Duration) *migration {
	m := newMigration(t, Options{RetryBudget: budget, RetryBackoffMin: 200 * time.Millisecond,
		RetryBackoffMax: time.Second, LeaseUpdateInterval: 200 * time.Millisecond})
	m.proxy = testenv.StartProxy(t, m.sim.URL.Host)
	m.sim.StarNFCHost()
	m.sim.ServeNFCRanges()
	m.downstream = 24 << 20 // 3 MiB/s: the disks' streams take about 5 s
	return m
}

// streamBytes is what the export reads when nothing is read twice: each
// disk's file as the simulator serves it (the sparse VMDKs whole, the
// monolithicFlat disk's flat extent).
func (m *migration) streamBytes(t *testing.T) int64 {
	var n int64
	for _, raw := range m.raws {
		dir, base := filepath.Dir(raw), strings.TrimSuffix(filepath.Base(raw), ".raw")
		name := base + ".vmdk"
		if base == "monolithicFlat" {
			name = base + "-flat.vmdk"
		}
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		n += st.Size()
	}
	return n
}

// cutWhen cuts the proxy once it has forwarded at bytes, and heals it
// after down; it returns the bytes forwarded when it cut.
func (m *migration) cutWhen(t *testing.T, at int64, down time.Duration) int64 {
	deadline := time.Now().Add(30 * time.Second)
	for m.proxy.Bytes() < at {
		if time.Now().After(deadline) {
			t.Fatalf("the proxy forwarded only %d bytes in 30 s", m.proxy.Bytes())
		}
		time.Sleep(10 * time.Millisecond)
	}
	m.proxy.Cut()
	before := m.proxy.Bytes()
	t.Logf("cut the source link after %d bytes, for %s", before, down)
	time.Sleep(down)
	m.proxy.Heal()
	return before
}

// TestConvertResumesAfterTheSourceLinkIsCut: the link to the vCenter is
// cut for 3 s mid-export with a 60 s budget. The driver logs in again,
// aborts the old lease, takes a new one and resumes each download where
// it broke: the job succeeds, every disk is identical to its raw image,
// and what crossed the link after the cut is the rest of the disks, not
// what was copied before it again.
func TestConvertResumesAfterTheSourceLinkIsCut(t *testing.T) {
	m := newCutMigration(t, time.Minute)
	stream := m.streamBytes(t)
	m.start(t)
	before := m.cutWhen(t, stream/3, 3*time.Second)
	r := m.result(t)
	if r.GetOutcome() != agentv1.JobOutcome_JOB_OUTCOME_SUCCEEDED {
		t.Fatalf("job %s: %q, want SUCCEEDED after the reconnect", r.GetOutcome(), r.GetReason())
	}
	m.checkDisks(t)
	total := m.proxy.Bytes()
	// Without resuming, the bytes before the cut cross the link twice:
	// total ≈ stream + before. With it, only the SOAP calls and the
	// overlap checked on resuming come on top of the stream.
	extra := total - stream
	t.Logf("disk streams %d bytes; through the link %d before the cut, %d in all: %d more than the streams",
		stream, before, total, extra)
	if before < stream/4 || before > stream*3/4 {
		t.Fatalf("the cut came after %d of %d bytes, not mid-export", before, stream)
	}
	if extra > before/4 {
		t.Errorf("%d bytes beyond the disks' streams crossed the link, want well under the %d copied before the cut",
			extra, before)
	}
	leases := m.sim.Leases.All()
	if len(leases) != 2 {
		t.Fatalf("%d leases, want 2 (the one the cut broke, then the one resumed on): %+v", len(leases), leases)
	}
	if l := leases[0]; l.State != vcsimtest.LeaseAborted || !strings.Contains(l.Fault, "dropped") {
		t.Errorf("first lease %s: %s %q, want aborted for the dropped connection", l.ID, l.State, l.Fault)
	}
	m.checkLeaseReleased(t, vcsimtest.LeaseCompleted, "")
}

// TestConvertFailsWhenTheSourceStaysAway: the link is cut for 8 s with a
// 3 s budget. The job fails with the reason, and the export lease is
// aborted (its snapshot removed) once the simulator answers again.
func TestConvertFailsWhenTheSourceStaysAway(t *testing.T) {
	m := newCutMigration(t, 3*time.Second)
	m.start(t)
	m.cutWhen(t, m.streamBytes(t)/3, 8*time.Second)
	r := m.result(t)
	if r.GetOutcome() != agentv1.JobOutcome_JOB_OUTCOME_FAILED {
		t.Fatalf("job %s: %q, want FAILED", r.GetOutcome(), r.GetReason())
	}
	for _, want := range []string{"source connection lost and not back within the retry budget of 3s",
		"the export lease was aborted and its snapshot removed once the source answered again"} {
		if !strings.Contains(r.GetReason(), want) {
			t.Errorf("reason %q does not say %q", r.GetReason(), want)
		}
	}
	for _, l := range m.sim.Leases.All() {
		if l.State == vcsimtest.LeaseOpen {
			t.Errorf("lease %s is still open", l.ID)
		}
	}
	m.checkLeaseReleased(t, vcsimtest.LeaseAborted, "source connection lost")
	if got := m.powerState(t); got != "poweredOff" {
		t.Errorf("source VM is %s after the failed job, want poweredOff", got)
	}
}

// TestConvertSeesAPowerOnDuringTheCut: the VM is powered on while the
// link is cut. The reconnect finds it on: the job fails for it and the
// lease is aborted with that reason, the VM left running as its owner
// wanted.
func TestConvertSeesAPowerOnDuringTheCut(t *testing.T) {
	m := newCutMigration(t, time.Minute)
	m.start(t)
	deadline := time.Now().Add(30 * time.Second)
	for m.proxy.Bytes() < m.streamBytes(t)/3 {
		if time.Now().After(deadline) {
			t.Fatal("the export did not start in 30 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	m.proxy.Cut()
	ctx := testContext(t, 30*time.Second)
	task, err := m.vm.PowerOn(ctx) // the test's own client reaches the simulator directly
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		t.Fatalf("power on: %v", err)
	}
	time.Sleep(time.Second)
	m.proxy.Heal()
	r := m.result(t)
	if r.GetOutcome() != agentv1.JobOutcome_JOB_OUTCOME_FAILED ||
		!strings.Contains(r.GetReason(), "source VM was powered on during the migration") {
		t.Fatalf("job %s: %q, want FAILED because the VM was powered on", r.GetOutcome(), r.GetReason())
	}
	m.checkLeaseReleased(t, vcsimtest.LeaseAborted, "")
	for _, l := range m.sim.Leases.All() {
		if l.State == vcsimtest.LeaseOpen {
			t.Errorf("lease %s is still open", l.ID)
		}
	}
	if got := m.powerState(t); got != "poweredOn" {
		t.Errorf("source VM is %s, want poweredOn as it was turned on", got)
	}
}

// TestConvertResumesWithoutByteRanges: an NFC download breaks after
// 1 MiB on a server that ignores byte ranges. The driver takes a new
// lease and reads the disk again up to the break, writing nothing twice:
// the disks are identical to their raw images.
func TestConvertResumesWithoutByteRanges(t *testing.T) {
	m := newMigration(t, Options{RetryBackoffMin: 100 * time.Millisecond})
	m.sim.CutNFCAfter(1 << 20)
	if r := m.run(t); r.GetOutcome() != agentv1.JobOutcome_JOB_OUTCOME_SUCCEEDED {
		t.Fatalf("job %s: %q, want SUCCEEDED after the broken download resumed", r.GetOutcome(), r.GetReason())
	}
	m.checkDisks(t)
	leases := m.sim.Leases.All()
	if len(leases) != 2 || leases[0].State != vcsimtest.LeaseAborted {
		t.Fatalf("leases %+v, want the broken one aborted and a second one", leases)
	}
	m.checkLeaseReleased(t, vcsimtest.LeaseCompleted, "")
}

// TestConvertWaitsForAnUnreachableSource: the link is down when the job
// starts and comes back 2 s later, within the budget: the job connects
// then and succeeds. A wrong password fails at once, not after the budget.
func TestConvertWaitsForAnUnreachableSource(t *testing.T) {
	m := newCutMigration(t, time.Minute)
	m.downstream = 0
	m.proxy.Cut()
	m.start(t)
	time.Sleep(2 * time.Second)
	m.proxy.Heal()
	if r := m.result(t); r.GetOutcome() != agentv1.JobOutcome_JOB_OUTCOME_SUCCEEDED {
		t.Fatalf("job %s: %q, want SUCCEEDED once the source answered", r.GetOutcome(), r.GetReason())
	}
	m.checkDisks(t)

	m.password = "wrong"
	start := time.Now()
	r := m.run(t)
	if r.GetOutcome() != agentv1.JobOutcome_JOB_OUTCOME_FAILED || !strings.Contains(r.GetReason(), "log in to") {
		t.Fatalf("job %s: %q, want FAILED for the refused login", r.GetOutcome(), r.GetReason())
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("a refused login took %s to fail the job: it was retried", d)
	}
}
