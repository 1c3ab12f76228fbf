package session

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// TestTargetRelay: the migration server's agent (ms) asks for its job's
// target host (h1); the leader relays the work, with the job, storage,
// networks and the peer, to h1's agent and h1's result back to ms. A stale
// epoch, a host that does not run the job, a job on the server's own host
// and a target host not connected are answered at once with why; a result
// from another host than the one asked is dropped; a request relayed to a
// host whose session ends unanswered is answered as such at once.
func TestTargetRelay(t *testing.T) {
	f := newFixture(t, Config{}, true)
	f.seedJob("hosts/ms", 1) // the server, credential and source
	f.apply(&ledgerv1.Command{Op: &ledgerv1.Command_PutCluster{PutCluster: &ledgerv1.PutCluster{Cluster: &ferryv1.Cluster{Name: "clusters/c1"}}}})
	f.apply(&ledgerv1.Command{Op: &ledgerv1.Command_PutPrimaryStorage{PutPrimaryStorage: &ledgerv1.PutPrimaryStorage{PrimaryStorage: &ferryv1.PrimaryStorage{
		Name: "primaryStorages/local", Cluster: "clusters/c1", Type: ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_LOCAL, Path: "/var/lib/ferry"}}}})
	newJob := func(name, targetHost string) {
		f.apply(&ledgerv1.Command{Op: &ledgerv1.Command_CreateMigrationJobs{CreateMigrationJobs: &ledgerv1.CreateMigrationJobs{Jobs: []*ferryv1.MigrationJob{{
			Name: name, Source: "sources/kvm1", SourceVm: name, MigrationServer: "migrationServers/ms", TargetHost: targetHost,
			Target: &ferryv1.TargetVm{VmName: "vm", PrimaryStorage: "primaryStorages/local", Disks: []*ferryv1.TargetDisk{{SourceDisk: "vda", SizeBytes: 1}}}}}}}})
		f.start(name, "hosts/ms", 2)
	}
	newJob("migrationJobs/placed", "hosts/h1")
	newJob("migrationJobs/local", "hosts/ms")
	newJob("migrationJobs/away", "hosts/h9")

	ms := f.connect(hello("ms"))
	ms.next() // welcome
	h1 := f.connect(hello("h1"))
	h1.next()
	ask := func(a *agent, id, job string, epoch int64) {
		a.send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_TargetRequest{TargetRequest: &agentv1.TargetRequest{
			RequestId: id, Job: job, Epoch: epoch, Action: agentv1.TargetAction_TARGET_ACTION_PREPARE_VOLUMES, SourceVm: []byte("{}")}}})
	}
	answer := func(a *agent) *agentv1.TargetWorkResult {
		t.Helper()
		for {
			if ans := a.next().GetTargetAnswer(); ans != nil {
				return ans
			}
		}
	}

	ask(ms, "r1", "migrationJobs/placed", 2)
	var work *agentv1.TargetWork
	for work == nil {
		work = h1.next().GetTargetWork()
	}
	if work.GetRequestId() != "r1" || work.GetAction() != agentv1.TargetAction_TARGET_ACTION_PREPARE_VOLUMES || work.GetEpoch() != 2 ||
		work.GetJob().GetName() != "migrationJobs/placed" || work.GetPeerHost() != "hosts/ms" ||
		work.GetPrimaryStorage().GetPath() != "/var/lib/ferry" || string(work.GetSourceVm()) != "{}" {
		t.Fatalf("work relayed to h1 = %v", work)
	}
	result := &agentv1.TargetWorkResult{RequestId: "r1", Job: "migrationJobs/placed", Epoch: 2, Action: work.GetAction(),
		Exports: []*agentv1.TargetExport{{SourceDisk: "vda", Address: "10.9.0.2:10809", ExportName: "tok"}}}
	h1.send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_TargetWorkResult{TargetWorkResult: result}})
	if got := answer(ms); !proto.Equal(got, result) {
		t.Fatalf("answer to ms = %v, want %v", got, result)
	}

	for _, tc := range []struct {
		name  string
		from  *agent
		job   string
		epoch int64
		want  string
	}{
		{"stale epoch", ms, "migrationJobs/placed", 1, "assignment superseded: job runs under epoch 2 on hosts/ms"},
		{"not the host running the job", h1, "migrationJobs/placed", 2, "assignment superseded: job runs under epoch 2 on hosts/ms"},
		{"placed on the server's own host", ms, "migrationJobs/local", 2, "the job's VM is placed on the migration server's own host"},
		{"target host not connected", ms, "migrationJobs/away", 2, "target host hosts/h9 is not connected"},
		{"no such job", ms, "migrationJobs/gone", 2, "job no longer exists"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ask(tc.from, "r-"+tc.name, tc.job, tc.epoch)
			if got := answer(tc.from); got.GetRequestId() != "r-"+tc.name || got.GetError() != tc.want || len(got.GetExports()) != 0 {
				t.Fatalf("answer = %v, want error %q", got, tc.want)
			}
		})
	}

	// A result nobody asked h1 for reaches nobody; the next relay still works.
	h1.send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_TargetWorkResult{TargetWorkResult: &agentv1.TargetWorkResult{
		RequestId: "forged", Job: "migrationJobs/placed", Epoch: 2}}})
	ask(ms, "r2", "migrationJobs/placed", 2)
	for work = nil; work == nil; {
		work = h1.next().GetTargetWork()
	}
	h1.send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_TargetWorkResult{TargetWorkResult: &agentv1.TargetWorkResult{
		RequestId: "r2", Job: "migrationJobs/placed", Epoch: 2, Error: "disk full"}}})
	if got := answer(ms); got.GetRequestId() != "r2" || got.GetError() != "disk full" {
		t.Fatalf("answer after a forged result = %v", got)
	}

	// h1 goes away with a request relayed to it unanswered: the asking
	// agent is answered at once that it is gone, not left to wait.
	ask(ms, "r3", "migrationJobs/placed", 2)
	for work = nil; work == nil; {
		work = h1.next().GetTargetWork()
	}
	h1.cancel()
	if got := answer(ms); got.GetRequestId() != "r3" || got.GetError() != "target host hosts/h1 disconnected before it answered" ||
		got.GetJob() != "migrationJobs/placed" || got.GetEpoch() != 2 || got.GetAction() != agentv1.TargetAction_TARGET_ACTION_PREPARE_VOLUMES {
		t.Fatalf("answer once h1 went away = %v", got)
	}
}

// TestPendingCleanup: a job cancelled while its target host's agent is
// down is rolled back there when it returns. The leader records the
// cleanup on the host (kept across the agent's hello), sends it as
// ROLLBACK work on the next hello, keeps it after a failed try and clears
// it once the agent did it.
func TestPendingCleanup(t *testing.T) {
	f := newFixture(t, Config{}, true)
	f.seedJob("hosts/ms", 1)
	f.apply(&ledgerv1.Command{Op: &ledgerv1.Command_PutCluster{PutCluster: &ledgerv1.PutCluster{Cluster: &ferryv1.Cluster{Name: "clusters/c1"}}}})
	f.apply(&ledgerv1.Command{Op: &ledgerv1.Command_PutPrimaryStorage{PutPrimaryStorage: &ledgerv1.PutPrimaryStorage{PrimaryStorage: &ferryv1.PrimaryStorage{
		Name: "primaryStorages/local", Cluster: "clusters/c1", Type: ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_LOCAL, Path: "/var/lib/ferry"}}}})
	const job = "migrationJobs/placed"
	target := &ferryv1.TargetVm{VmName: "web", PrimaryStorage: "primaryStorages/local", Disks: []*ferryv1.TargetDisk{{SourceDisk: "vda", SizeBytes: 1}}}
	f.apply(&ledgerv1.Command{Op: &ledgerv1.Command_CreateMigrationJobs{CreateMigrationJobs: &ledgerv1.CreateMigrationJobs{Jobs: []*ferryv1.MigrationJob{{
		Name: job, Source: "sources/kvm1", SourceVm: "web", MigrationServer: "migrationServers/ms", TargetHost: "hosts/h2", Target: target}}}}})
	f.start(job, "hosts/ms", 5)

	h2 := f.connect(hello("h2"))
	h2.next()
	h2.cancel() // h2's agent goes away
	testkit.WaitFor(t, 5*time.Second, "h2 is disconnected", func() bool { return f.mgr.session("hosts/h2") == nil })
	f.apply(&ledgerv1.Command{Op: &ledgerv1.Command_CancelMigrationJob{CancelMigrationJob: &ledgerv1.CancelMigrationJob{Name: job, Reason: "operator"}}})

	ms := f.connect(hello("ms"))
	ms.next()
	ms.send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_TargetRequest{TargetRequest: &agentv1.TargetRequest{
		RequestId: "rb", Job: job, Epoch: 5, Action: agentv1.TargetAction_TARGET_ACTION_ROLLBACK}}})
	var ans *agentv1.TargetWorkResult
	for ans == nil {
		ans = ms.next().GetTargetAnswer()
	}
	if ans.GetError() != "" || len(ans.GetWarnings()) != 1 || !strings.Contains(ans.GetWarnings()[0], "target host hosts/h2 is not connected") {
		t.Fatalf("answer to a rollback while h2 is down = %v", ans)
	}
	pending := func() []*ferryv1.PendingCleanup {
		h, _ := f.ledger.Host("hosts/h2")
		return h.GetPendingCleanups()
	}
	if p := pending(); len(p) != 1 || p[0].GetJob() != job || p[0].GetEpoch() != 5 || p[0].GetTarget().GetVmName() != "web" ||
		p[0].GetPrimaryStorage().GetPath() != "/var/lib/ferry" {
		t.Fatalf("pending cleanups of h2 = %v", p)
	}

	for _, fail := range []bool{true, false} {
		h2 = f.connect(hello("h2"))
		h2.next() // welcome
		var work *agentv1.TargetWork
		for work == nil {
			work = h2.next().GetTargetWork()
		}
		if work.GetAction() != agentv1.TargetAction_TARGET_ACTION_ROLLBACK || work.GetJob().GetName() != job || work.GetEpoch() != 5 ||
			work.GetJob().GetTarget().GetVmName() != "web" || work.GetPrimaryStorage().GetPath() != "/var/lib/ferry" {
			t.Fatalf("work sent to the returning h2 = %v", work)
		}
		res := &agentv1.TargetWorkResult{RequestId: work.GetRequestId(), Job: job, Epoch: 5, Action: work.GetAction()}
		if fail {
			res.Error = "libvirt unreachable"
		}
		h2.send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_TargetWorkResult{TargetWorkResult: res}})
		if fail {
			// Still owed: it goes again on the next hello.
			h2.send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Heartbeat{Heartbeat: &agentv1.Heartbeat{}}})
			if len(pending()) != 1 {
				t.Fatal("a failed cleanup was cleared")
			}
			h2.cancel()
			testkit.WaitFor(t, 5*time.Second, "h2 is disconnected", func() bool { return f.mgr.session("hosts/h2") == nil })
			continue
		}
		testkit.WaitFor(t, 5*time.Second, "the cleanup is cleared", func() bool { return len(pending()) == 0 })
	}
}

// TestLostServerLeavesTheTargetHostACleanup: the migration server's agent
// is lost past the grace period with a job whose VM is placed on h2; the
// job fails, and h2's agent, connected, is sent the rollback at once.
func TestLostServerLeavesTheTargetHostACleanup(t *testing.T) {
	f := newFixture(t, Config{SweepInterval: 20 * time.Millisecond}, true)
	f.setGrace(200 * time.Millisecond)
	f.seedJob("hosts/ms", 1)
	const job = "migrationJobs/placed"
	f.apply(&ledgerv1.Command{Op: &ledgerv1.Command_CreateMigrationJobs{CreateMigrationJobs: &ledgerv1.CreateMigrationJobs{Jobs: []*ferryv1.MigrationJob{{
		Name: job, Source: "sources/kvm1", SourceVm: "web", MigrationServer: "migrationServers/ms", TargetHost: "hosts/h2",
		Target: &ferryv1.TargetVm{VmName: "web", Disks: []*ferryv1.TargetDisk{{SourceDisk: "vda", SizeBytes: 1}}}}}}}})
	ms := f.connect(hello("ms"))
	ms.next()
	f.start(job, "hosts/ms", 1)
	h2 := f.connect(hello("h2"))
	h2.next()
	ms.cancel()
	var work *agentv1.TargetWork
	for work == nil {
		work = h2.next().GetTargetWork()
	}
	if j := mustJob(t, f, job); j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED {
		t.Fatalf("job = %v", j)
	}
	if work.GetAction() != agentv1.TargetAction_TARGET_ACTION_ROLLBACK || work.GetJob().GetName() != job || work.GetJob().GetTarget().GetVmName() != "web" {
		t.Fatalf("work sent to h2 = %v", work)
	}
	h, _ := f.ledger.Host("hosts/h2")
	if p := h.GetPendingCleanups(); len(p) != 1 || !strings.HasPrefix(p[0].GetReason(), ReasonAgentLost) {
		t.Fatalf("pending cleanups of h2 = %v", p)
	}
}
