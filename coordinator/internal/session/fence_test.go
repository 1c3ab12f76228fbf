package session

import (
	"strings"
	"testing"

	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// TestFenceCheck: the leader confirms a target write only for the job's
// current assignment on the asking host, or on the host the job's VM is
// placed on; a superseded epoch, another host's job, a finished or unknown
// job are refused with the reason. An undo (the rollback of a job that
// ended) is allowed for the job's own epoch on its host whatever the state,
// for a job that no longer exists, and for a job assigned again with its
// target elsewhere; never when the newer assignment's target is on the
// host the undo would clean.
func TestFenceCheck(t *testing.T) {
	f := newFixture(t, Config{}, true)
	running := f.seedJob("hosts/h1", 1)
	f.start(running, "hosts/h1", 3)
	elsewhere := f.seedJob("hosts/h1", 1)
	f.start(elsewhere, "hosts/h2", 1)
	// Run by h2's migration server, its VM placed on h1.
	placedHere := "migrationJobs/placed"
	f.apply(&ledgerv1.Command{Op: &ledgerv1.Command_CreateMigrationJobs{CreateMigrationJobs: &ledgerv1.CreateMigrationJobs{Jobs: []*ferryv1.MigrationJob{{
		Name: placedHere, Source: "sources/kvm1", SourceVm: "vm9", MigrationServer: "migrationServers/ms", TargetHost: "hosts/h1",
		Target: &ferryv1.TargetVm{VmName: "vm9", Disks: []*ferryv1.TargetDisk{{SourceDisk: "vda", SizeBytes: 1}}}}}}}})
	f.start(placedHere, "hosts/h2", 4)
	failed := f.seedJob("hosts/h1", 1)
	f.start(failed, "hosts/h1", 1)
	f.apply(&ledgerv1.Command{Op: &ledgerv1.Command_FinishMigrationJob{FinishMigrationJob: &ledgerv1.FinishMigrationJob{
		Name: failed, Epoch: 1, State: ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED, Reason: "agent lost"}}})
	a := f.connect(hello("h1", &agentv1.HeldJob{Job: running, Epoch: 3}))
	a.next() // welcome
	for _, tc := range []struct {
		job     string
		epoch   int64
		undo    bool
		target  string // FenceCheck.target_host of an undo
		current bool
		reason  string
	}{
		{running, 3, false, "", true, ""},
		{running, 2, false, "", false, "superseded: job runs under epoch 3 on hosts/h1"},
		{elsewhere, 1, false, "", false, "superseded: job runs under epoch 1 on hosts/h2"},
		{placedHere, 4, false, "", true, ""},
		{placedHere, 3, false, "", false, "superseded: job runs under epoch 4 on hosts/h2"},
		{failed, 1, false, "", false, "job is MIGRATION_JOB_STATE_FAILED"},
		{"migrationJobs/gone", 1, false, "", false, "job no longer exists"},
		// Undo: its own epoch, whatever the state.
		{running, 3, true, "", true, ""},
		{placedHere, 4, true, "", true, ""},
		{failed, 1, true, "", true, ""},
		{"migrationJobs/gone", 1, true, "", true, ""},
		// Not a writer of the job's current epoch.
		{elsewhere, 1, true, "", false, "superseded: job runs under epoch 1 on hosts/h2"},
		// A newer epoch whose target is where the undo would clean.
		{running, 2, true, "", false, "superseded: job runs under epoch 3 with its target on hosts/h1"},
		{failed, 0, true, "", false, "superseded: job runs under epoch 1 with its target on hosts/h1"},
		{placedHere, 3, true, "", false, "superseded: job runs under epoch 4 with its target on hosts/h1"},
		// A newer epoch whose target moved elsewhere: the old one is undone.
		{elsewhere, 0, true, "", true, ""},
		{placedHere, 3, true, "hosts/h3", true, ""},
	} {
		a.send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_FenceCheck{FenceCheck: &agentv1.FenceCheck{
			RequestId: "r-" + tc.job, Job: tc.job, Epoch: tc.epoch, Write: "create volume /x", Undo: tc.undo, TargetHost: tc.target}}})
		msg := a.next()
		for msg.GetFenceAnswer() == nil { // a cancellation from the hello's reconciliation, say
			msg = a.next()
		}
		ans := msg.GetFenceAnswer()
		if ans.GetRequestId() != "r-"+tc.job || ans.GetCurrent() != tc.current || !strings.Contains(ans.GetReason(), tc.reason) {
			t.Errorf("fence check of %s epoch %d (undo %v) = %v, want current=%v reason containing %q", tc.job, tc.epoch, tc.undo, ans, tc.current, tc.reason)
		}
	}
}
