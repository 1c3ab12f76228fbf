package session

import (
	"context"
	"errors"
	"testing"
	"time"

	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
)

// fenceCheck waits for the next FenceCheck the outbox holds.
func fenceCheck(t *testing.T, o *Outbox) *agentv1.FenceCheck {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, m := range o.take() {
			if fc := m.GetFenceCheck(); fc != nil {
				return fc
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("no fence check queued")
	return nil
}

// TestFencesConfirm: a check waits without a session and asks nothing; once
// connected it asks (again after the retry period when unanswered) and
// returns what the leader answered for its request.
func TestFencesConfirm(t *testing.T) {
	o := NewOutbox()
	f := NewFences(o, nil)
	f.retry = 50 * time.Millisecond
	done := make(chan error, 1)
	go func() { done <- f.Confirm(context.Background(), "migrationJobs/j1", 3, "create volume /v") }()
	time.Sleep(150 * time.Millisecond)
	if msgs := o.take(); len(msgs) != 0 {
		t.Fatalf("asked %v without a session", msgs)
	}
	select {
	case err := <-done:
		t.Fatalf("Confirm returned %v without an answer", err)
	default:
	}
	f.setConnected(true)
	first := fenceCheck(t, o)
	second := fenceCheck(t, o) // the first went unanswered
	if first.GetRequestId() == second.GetRequestId() || second.GetJob() != "migrationJobs/j1" || second.GetEpoch() != 3 ||
		second.GetWrite() != "create volume /v" {
		t.Fatalf("checks %v then %v", first, second)
	}
	f.answer(&agentv1.FenceAnswer{RequestId: first.GetRequestId(), Current: true}) // stale: ignored
	f.answer(&agentv1.FenceAnswer{RequestId: second.GetRequestId(), Current: false, Reason: "job is MIGRATION_JOB_STATE_FAILED"})
	select {
	case err := <-done:
		if !errors.Is(err, ErrFenced) {
			t.Fatalf("Confirm = %v, want ErrFenced", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Confirm did not return after the answer")
	}

	go func() { done <- f.Confirm(context.Background(), "migrationJobs/j1", 3, "define domain vm") }()
	fc := fenceCheck(t, o)
	f.answer(&agentv1.FenceAnswer{RequestId: fc.GetRequestId(), Current: true})
	if err := <-done; err != nil {
		t.Fatalf("Confirm after a yes = %v", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	go func() { done <- f.Confirm(ctx, "migrationJobs/j1", 3, "upload onto volume /v") }()
	fenceCheck(t, o)
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Confirm after cancel = %v", err)
	}
}
