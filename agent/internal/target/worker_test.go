package target

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"
)

// TestRollbackOfAnOlderEpochIsFenced: a target host's worker asked to
// roll back a job's epoch 3 (a pending cleanup sent on its hello, say)
// while the job was assigned again as epoch 4 with its target on the same
// host. The leader's answer (played by Undo, the ledger's rule: an older
// epoch's undo is refused once a newer one's target is here) and the
// volumes' preparation are taken under one lock per job, so the two
// orders a real session can deliver both end with epoch 4's volume in
// place: the rollback first (allowed, then the preparation creates the
// volume), or the preparation first (the rollback refused, not an error,
// the volume and its export untouched). The current epoch's own rollback
// still removes it.
func TestRollbackOfAnOlderEpochIsFenced(t *testing.T) {
	testenv.RequireLibvirt(t)
	name := "ferrytest-" + randHex(4)
	job := &ferryv1.MigrationJob{Name: "migrationJobs/" + name, TargetHost: "hosts/h2", AssignedHost: "hosts/ms", Epoch: 4,
		Target: &ferryv1.TargetVm{VmName: name, Cpus: 1, MemoryBytes: 64 << 20, PrimaryStorage: "primaryStorages/local",
			Disks: []*ferryv1.TargetDisk{{SourceDisk: "vda", SizeBytes: sourceSize}}}}
	var current atomic.Int64 // the epoch whose target is on h2, as the ledger says
	current.Store(3)
	asked := make(chan int64, 4)
	undoGate := make(chan struct{})
	h := newTwoHosts(t, job, nil, WorkerConfig{Undo: func(ctx context.Context, j string, epoch int64) error {
		asked <- epoch
		select {
		case <-undoGate:
		case <-ctx.Done():
			return ctx.Err()
		}
		cur := current.Load()
		if j != job.GetName() {
			return fmt.Errorf("undo asked for %s", j)
		}
		if epoch != cur {
			return fmt.Errorf("assignment superseded: job runs under epoch %d with its target on hosts/h2", cur)
		}
		return nil
	}})
	vol := h.volume(t)
	work := func(action agentv1.TargetAction, epoch int64) *agentv1.TargetWork {
		return &agentv1.TargetWork{RequestId: fmt.Sprint(action, epoch), Action: action, Job: job, Epoch: epoch,
			PrimaryStorage: h.storage, PeerHost: "hosts/ms"}
	}
	rollback := func(epoch int64) <-chan *agentv1.TargetWorkResult {
		ch := make(chan *agentv1.TargetWorkResult, 1)
		go func() {
			ch <- h.worker.Do(context.Background(), work(agentv1.TargetAction_TARGET_ACTION_ROLLBACK, epoch))
		}()
		return ch
	}
	t.Cleanup(func() { _ = os.Remove(vol.Path) })

	// The rollback of epoch 3 first: while it waits for the leader, epoch
	// 4's preparation waits for it, and does not create its volume for
	// the rollback to remove. (The leader answered before epoch 4 was
	// assigned: the undo is allowed.)
	rb := rollback(3)
	if e := <-asked; e != 3 {
		t.Fatalf("undo asked for epoch %d, want 3", e)
	}
	pr := make(chan *agentv1.TargetWorkResult, 1)
	go func() {
		pr <- h.worker.Do(context.Background(), work(agentv1.TargetAction_TARGET_ACTION_PREPARE_VOLUMES, 4))
	}()
	select {
	case res := <-pr:
		t.Fatalf("epoch 4's volumes were prepared while epoch 3's rollback was under way: %v", res)
	case <-time.After(300 * time.Millisecond):
	}
	undoGate <- struct{}{}
	if res := <-rb; res.GetError() != "" || len(res.GetWarnings()) != 0 {
		t.Fatalf("rollback of epoch 3 = error %q, warnings %q; want done", res.GetError(), res.GetWarnings())
	}
	current.Store(4) // the leader assigned the job again
	if res := <-pr; res.GetError() != "" || len(res.GetExports()) != 1 || !res.GetExports()[0].GetCreated() {
		t.Fatalf("prepare of epoch 4 = error %q, exports %v; want one volume created", res.GetError(), res.GetExports())
	}
	if _, err := os.Stat(vol.Path); err != nil {
		t.Fatalf("epoch 4's volume after the older rollback: %v", err)
	}

	// Epoch 4's volume served; a late rollback of epoch 3 is refused by
	// the leader: a warning, no error (a pending cleanup is done), and the
	// volume and its export stay.
	close(undoGate)
	res := <-rollback(3)
	if e := <-asked; e != 3 {
		t.Errorf("undo asked for epoch %d, want 3", e)
	}
	if res.GetError() != "" || len(res.GetWarnings()) != 1 || !strings.Contains(res.GetWarnings()[0], "superseded: job runs under epoch 4") {
		t.Errorf("late rollback of epoch 3 = error %q, warnings %q; want one warning naming epoch 4", res.GetError(), res.GetWarnings())
	}
	if _, err := os.Stat(vol.Path); err != nil {
		t.Errorf("epoch 4's volume after a refused rollback: %v", err)
	}
	h.worker.mu.Lock()
	served := len(h.worker.serving[job.GetName()])
	h.worker.mu.Unlock()
	if served != 1 {
		t.Errorf("epoch 4's volume served %d times after a refused rollback, want 1", served)
	}

	// Epoch 4's own rollback removes it.
	res = <-rollback(4)
	<-asked
	if res.GetError() != "" || len(res.GetWarnings()) != 0 {
		t.Errorf("rollback of epoch 4 = error %q, warnings %q; want done", res.GetError(), res.GetWarnings())
	}
	if _, err := os.Stat(vol.Path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the volume outlived its own epoch's rollback: %v", err)
	}
}
