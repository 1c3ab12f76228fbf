package e2e

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/agent/internal/source/vmware/vcsimtest"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"
)

// TestFaultVCenterCutRetried: the link between the agent and the vCenter
// simulator (SOAP and NFC downloads alike) is cut for 4 s mid-export,
// with a 60 s retry budget. The agent logs in again, aborts the broken
// export lease, resumes each disk on a new one where it broke, and the
// job succeeds with every target disk identical to its source; the bytes
// through the link beyond the disks' streams stay well under what crossed
// it before the cut.
func TestFaultVCenterCutRetried(t *testing.T) {
	t.Parallel() // see doc.go
	w := newWorldWith(t, worldOptions{agentArgs: []string{"--source-retry-budget", "60s"}})
	sim := vcsimtest.Start(t)
	sim.StarNFCHost()
	sim.ServeNFCRanges()
	raws := prepareVMwareVM(t, sim)
	var stream int64
	for _, raw := range raws {
		name := strings.TrimSuffix(raw, ".raw") + ".vmdk"
		if strings.HasSuffix(raw, "monolithicFlat.raw") {
			name = strings.TrimSuffix(raw, ".raw") + "-flat.vmdk"
		}
		st, err := os.Stat(name)
		must(t, err)
		stream += st.Size()
	}
	proxy := testenv.StartProxy(t, sim.URL.Host)
	source := w.createVMwareSourceAt(sim, proxy.Host(), proxy.Port())
	server := w.createVMwareServerWith(48 << 20) // 6 MiB/s: the streams take several seconds
	vm := w.sourceVM(source, "DC0_H0_VM0")
	// The simulator's disks hold no OS for a guest conversion to adapt.
	spec := w.spec(vm, &ferryv1.MigrationOptions{GuestConversion: ferryv1.GuestConversion_GUEST_CONVERSION_OFF})
	resp, err := w.f.client.Jobs().CreateMigrationJobs(ctx(t, 10*time.Second), &ferryv1.CreateMigrationJobsRequest{
		Source: source, MigrationServer: server, Jobs: []*ferryv1.MigrationJobSpec{spec}})
	must(t, err)
	name := resp.GetJobs()[0].GetName()

	start := proxy.Bytes() // the inventory went through the link too
	deadline := time.Now().Add(time.Minute)
	for proxy.Bytes()-start < stream/3 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d bytes crossed the link in a minute", proxy.Bytes()-start)
		}
		time.Sleep(10 * time.Millisecond)
	}
	proxy.Cut()
	before := proxy.Bytes() - start
	time.Sleep(4 * time.Second)
	if j := w.job(name); terminal(j) {
		t.Fatalf("job ended %s while the vCenter was cut: %s", j.GetState(), j.GetReason())
	}
	proxy.Heal()
	j := w.waitJob(name, 3*time.Minute, "the job to end", terminal)
	if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
		t.Fatalf("job ended %s: %s", j.GetState(), j.GetReason())
	}
	for i, d := range vm.GetDisks() {
		compare(t, raws[i], w.volume(name, d.GetTarget()))
	}
	total := proxy.Bytes() - start
	extra := total - stream
	t.Logf("streams %d bytes; %d crossed the link before the cut, %d in all (%d beyond the streams)", stream, before, total, extra)
	if extra > before/4 {
		t.Errorf("%d bytes beyond the disks' streams crossed the link, want well under the %d before the cut", extra, before)
	}
	leases := sim.Leases.All()
	if len(leases) < 2 || leases[0].State != vcsimtest.LeaseAborted || leases[len(leases)-1].State != vcsimtest.LeaseCompleted {
		t.Errorf("leases %+v, want the broken one aborted and the last completed", leases)
	}
	agent := w.f.agents[w.vmwareHost()]
	if l := agent.lines("the copy resumes on a new export lease"); len(l) == 0 {
		t.Error("the agent logged no reconnect")
	} else {
		t.Logf("reconnected: %s", l[0])
	}
}
