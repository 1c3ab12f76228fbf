package session

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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
// leader and waits for their answers (docs/placement.md). A request is
// queued while the agent has no session too: the outbox sends it on the
// next one.
type Targets struct {
	*asker[*agentv1.TargetWorkResult]
	log *slog.Logger
}

// NewTargets returns the requester; the session Client must get it in its
// Deps to deliver the answers.
func NewTargets(outbox *Outbox, log *slog.Logger) *Targets {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Targets{asker: newAsker[*agentv1.TargetWorkResult](outbox, DefaultTargetRetry, true), log: log.With("component", "targets")}
}

// Request sends req (its request ID is set here) and returns the answer;
// an answer with an error is ErrTargetRefused with the reason.
func (t *Targets) Request(ctx context.Context, req *agentv1.TargetRequest) (*agentv1.TargetWorkResult, error) {
	for attempt := 1; ; attempt++ {
		ans, got, _, err := t.once(ctx, func(id string) *agentv1.ConnectRequest {
			r := proto.Clone(req).(*agentv1.TargetRequest)
			r.RequestId = id
			return &agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_TargetRequest{TargetRequest: r}}
		})
		switch {
		case got && ans.GetError() != "":
			return ans, fmt.Errorf("%w: %s %s: %s", ErrTargetRefused, req.GetAction(), req.GetJob(), ans.GetError())
		case got:
			return ans, nil
		case err != nil:
			return nil, err
		}
		t.log.Info("no answer from the target host yet; asking again", "job", req.GetJob(), "action", req.GetAction(), "attempt", attempt)
	}
}
