package e2e

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/ferry-v2v/ferry/pkg/grpcutil"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// addServer starts one more agent on a host of its own with its own cache
// and makes it a KVM migration server; it returns the host and server.
func (w *world) addServer(suffix string) (host, server string) {
	host = w.host + "-" + suffix
	cache := w.t.TempDir()
	w.f.startAgent(host, cache)
	ms, err := w.f.client.MigrationServers().CreateMigrationServer(ctx(w.t, 10*time.Second), &ferryv1.CreateMigrationServerRequest{
		MigrationServer: &ferryv1.MigrationServer{Host: "hosts/" + host, Type: ferryv1.Platform_PLATFORM_KVM, CachePath: cache}})
	must(w.t, err)
	return host, ms.GetName()
}

// liveJob reads a job from the leader, where live progress is: a
// follower knows only the ledger's checkpoints.
func (w *world) liveJob(name string) *ferryv1.MigrationJob {
	resp, err := w.f.client.Jobs().GetMigrationJob(grpcutil.WithLinearizableRead(ctx(w.t, 10*time.Second)),
		&ferryv1.GetMigrationJobRequest{Name: name})
	must(w.t, err)
	return resp
}

// domainsByJob counts, for every domain on the host, the Ferry job its
// metadata names.
func (w *world) domainsByJob() map[string]int {
	out := map[string]int{}
	names, err := w.lv.TryVirsh("list", "--all", "--name")
	must(w.t, err)
	for _, n := range strings.Fields(names) {
		xml, err := w.lv.TryVirsh("dumpxml", n)
		if err != nil {
			continue // gone meanwhile (another test's)
		}
		if _, rest, ok := strings.Cut(xml, `ferry-v2v.dev/xmlns/1" job="`); ok {
			job, _, _ := strings.Cut(rest, `"`)
			out[job]++
		}
	}
	return out
}

// TestFaultLeaderKilledDuringSixMigrations: a cluster of three coordinator
// processes, two agents (two migration servers, 4 MiB/s downstream each)
// running three migrations each. The leader is killed with SIGKILL while
// the disks are being copied. A new leader is elected, both agents find it
// by themselves, and all six jobs succeed in their first attempt: every
// target disk identical to its source, exactly one target VM per job.
func TestFaultLeaderKilledDuringSixMigrations(t *testing.T) {
	t.Parallel() // see doc.go
	w := newWorldWith(t, worldOptions{coordinators: 3})
	host2, server2 := w.addServer("b")
	servers, hosts := []string{w.server, server2}, []string{w.host, host2}
	for _, s := range servers {
		_, err := w.f.client.MigrationServers().SetMigrationServerBandwidth(ctx(t, 10*time.Second),
			&ferryv1.SetMigrationServerBandwidthRequest{Name: s, DownstreamBandwidth: proto.String(fourMiBps)})
		must(t, err)
	}
	vms := make([]*testenv.TestVM, 6)
	for i := range vms {
		vms[i] = testenv.NewTestVM(t, w.lv, testenv.VMOptions{RandomBytes: 8 << 20})
	}
	// Every spec first, so that both servers start copying together.
	// Running ones only: the shared libvirtd may hold many shut-off domains.
	listed, err := w.f.client.Sources().ListSourceVMs(ctx(t, 60*time.Second), &ferryv1.ListSourceVMsRequest{Source: w.source, Refresh: true,
		State: ferryv1.SourceVmState_SOURCE_VM_STATE_RUNNING, PageSize: 1000})
	must(t, err)
	byName := map[string]*ferryv1.SourceVm{}
	for _, vm := range listed.GetVms() {
		byName[vm.GetName()] = vm
	}
	specs := make([]*ferryv1.MigrationJobSpec, len(vms))
	for i, vm := range vms {
		if byName[vm.Name] == nil {
			t.Fatalf("ListSourceVMs has no %s", vm.Name)
		}
		specs[i] = w.spec(byName[vm.Name], nil)
	}
	var jobs []string
	for s, server := range servers {
		resp, err := w.f.client.Jobs().CreateMigrationJobs(ctx(t, 10*time.Second), &ferryv1.CreateMigrationJobsRequest{
			Source: w.source, MigrationServer: server, Jobs: specs[3*s : 3*s+3]})
		must(t, err)
		for _, j := range resp.GetJobs() {
			jobs = append(jobs, j.GetName())
		}
	}
	// done and total are the root disks' bytes, copied first.
	var done, total int64
	// Generous: six copies at once beside the other parallel tests on a
	// loaded machine took longer than 2 minutes to get there (ci24).
	testkit.WaitFor(t, 5*time.Minute, "every job copying, a fifth of the root disks in the caches", func() bool {
		done, total = 0, 0
		for _, name := range jobs {
			j := w.liveJob(name)
			d := disk(j, "vda")
			if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING || d.GetTotalBytes() == 0 {
				return false
			}
			done, total = done+d.GetDoneBytes(), total+d.GetTotalBytes()
		}
		return done*5 >= total
	})
	old := w.f.leader()
	old.proc.kill()
	killedAt := time.Now()
	t.Logf("killed leader %s (SIGKILL) with %d of the root disks' %d bytes copied (%.0f %%)", old.id, done, total, 100*float64(done)/float64(total))
	if done >= total {
		t.Fatal("the root disks were copied before the leader was killed")
	}
	var leader *coordNode
	testkit.WaitFor(t, 60*time.Second, "a new leader", func() bool {
		leader = w.f.leader()
		return leader != old
	})
	elected := time.Since(killedAt)
	var resumed time.Duration
	testkit.WaitFor(t, 60*time.Second, "progress past what was copied at the kill, on the new leader", func() bool {
		var now int64
		for _, name := range jobs {
			j := w.liveJob(name)
			now += disk(j, "vda").GetDoneBytes()
			if terminal(j) {
				now = total + 1 // a job ended: progress did move
			}
		}
		resumed = time.Since(killedAt)
		return now > done
	})
	for _, h := range hosts {
		testkit.WaitFor(t, 60*time.Second, "agent "+h+" in session with the new leader", func() bool {
			for _, l := range w.f.agents[h].lines("session open") {
				if strings.Contains(l, "coordinator="+leader.addr) {
					return true
				}
			}
			return false
		})
	}
	reconnected := time.Since(killedAt)
	for _, name := range jobs {
		j := w.waitJob(name, 4*time.Minute, "job "+name+" to end", terminal)
		if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED || j.GetAttempt() != 1 {
			t.Errorf("job %s ended %s in attempt %d: %s", name, j.GetState(), j.GetAttempt(), j.GetReason())
		}
	}
	finished := time.Since(killedAt)
	if t.Failed() {
		t.FailNow()
	}
	for i, name := range jobs {
		for _, d := range vms[i].Disks {
			compare(t, d.Path, w.volume(name, d.Target))
		}
	}
	domains := w.domainsByJob()
	for _, name := range jobs {
		if domains[name] != 1 {
			t.Errorf("job %s has %d target domains, want exactly 1", name, domains[name])
		}
	}
	t.Logf("leader %s killed mid-copy; %s elected after %v, progress moving again on it after %v, both agents in session "+
		"with it after %v; 6/6 jobs SUCCEEDED in attempt 1 within %v of the kill, 12 disks identical, one domain per job",
		old.id, leader.id, elected.Round(100*time.Millisecond), resumed.Round(100*time.Millisecond),
		reconnected.Round(100*time.Millisecond), finished.Round(100*time.Millisecond))
	if resumed > 20*time.Second {
		t.Errorf("progress paused for %v after the leader was killed, want a short pause", resumed)
	}
}
