package session

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
)

// DefaultTargetRetry is how long a target request waits for its answer
// before it is sent again (creating volumes or defining a domain may take
// a while; the target host's agent does each action idempotently).
const DefaultTargetRetry = 2 * time.Minute

// ErrTargetRefused: the leader or the target host's agent answered a
// target request with an error.
var ErrTargetRefused = errors.New("target host")

// TargetWorker carries out the work the leader relays to this host as a
// job's target host (target.Worker).
type TargetWorker interface {
	Do(ctx context.Context, work *agentv1.TargetWork) *agentv1.TargetWorkResult
}

// Targets sends a job's requests for its target host's agent through the
// leader and waits for their answers (docs/placement.md).
type Targets struct {
	outbox *Outbox
	log    *slog.Logger
	retry  time.Duration

	mu      sync.Mutex
	waiting map[string]chan *agentv1.TargetWorkResult
}

// NewTargets returns the requester; the session Client must get it in its
// Deps to deliver the answers.
func NewTargets(outbox *Outbox, log *slog.Logger) *Targets {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Targets{outbox: outbox, log: log.With("component", "targets"), retry: DefaultTargetRetry,
		waiting: map[string]chan *agentv1.TargetWorkResult{}}
}

// Request sends req (its request ID is set here) and returns the answer;
// an answer with an error is ErrTargetRefused with the reason.
func (t *Targets) Request(ctx context.Context, req *agentv1.TargetRequest) (*agentv1.TargetWorkResult, error) {
	for attempt := 1; ; attempt++ {
		id := newRequestID()
		ch := make(chan *agentv1.TargetWorkResult, 1)
		t.mu.Lock()
		t.waiting[id] = ch
		t.mu.Unlock()
		r := proto.Clone(req).(*agentv1.TargetRequest)
		r.RequestId = id
		t.outbox.queue(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_TargetRequest{TargetRequest: r}})
		timer := time.NewTimer(t.retry)
		var ans *agentv1.TargetWorkResult
		select {
		case ans = <-ch:
		case <-timer.C:
		case <-ctx.Done():
		}
		timer.Stop()
		t.mu.Lock()
		delete(t.waiting, id)
		t.mu.Unlock()
		switch {
		case ans != nil && ans.GetError() != "":
			return ans, fmt.Errorf("%w: %s %s: %s", ErrTargetRefused, req.GetAction(), req.GetJob(), ans.GetError())
		case ans != nil:
			return ans, nil
		case ctx.Err() != nil:
			return nil, ctx.Err()
		}
		t.log.Info("no answer from the target host yet; asking again", "job", req.GetJob(), "action", req.GetAction(), "attempt", attempt)
	}
}

// answer delivers an answer to its waiter, if it still waits.
func (t *Targets) answer(a *agentv1.TargetWorkResult) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if ch, ok := t.waiting[a.GetRequestId()]; ok {
		ch <- a
		delete(t.waiting, a.GetRequestId())
	}
}
