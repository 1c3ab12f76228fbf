package api

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/ferry-v2v/ferry/pkg/grpcutil"
)

// ReadState is what the API needs to serve reads from the local ledger no
// older than asked: the FSM's applied index and the Raft node's floor and
// contact with the leader. The server wires *fsm.FSM and *consensus.Node.
type ReadState interface {
	// AppliedIndex is the log index of the ledger state a read made now
	// reflects at least.
	AppliedIndex() uint64
	// WaitApplied returns once AppliedIndex reaches index, or ctx's error.
	WaitApplied(ctx context.Context, index uint64) error
	// ReadFloor is the highest index this node may have applied before it
	// restarted: local reads wait for it, so they never go back in time.
	ReadFloor() uint64
	// LastContact is when this node last heard from the leader (now on
	// the leader).
	LastContact() time.Time
}

// errForward is readiness's answer that the read should go to the leader.
var errForward = errors.New("forward the read to the leader")

// indexSinkKey carries, in a write's context, where propose notes the log
// index of the command it replicated.
type indexSinkKey struct{}

type indexSink struct{ index atomic.Uint64 }

func (s *indexSink) note(index uint64) {
	for {
		old := s.index.Load()
		if index <= old || s.index.CompareAndSwap(old, index) {
			return
		}
	}
}

// noteIndex records a replicated command's index for the write's answer.
func noteIndex(ctx context.Context, index uint64) {
	if s, ok := ctx.Value(indexSinkKey{}).(*indexSink); ok && index > 0 {
		s.note(index)
	}
}

// serveWrite runs a write (or leader-only read) here, on the leader, and
// answers with the index of the last command it replicated, or the applied
// index when it replicated none (a request_id's repeat).
func (a *API) serveWrite(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler, forwarded bool) (any, error) {
	sink := &indexSink{}
	resp, err := handler(context.WithValue(ctx, indexSinkKey{}, sink), req)
	if grpcutil.IsNotLeader(err) && !forwarded {
		// Leadership moved between IsLeader and Propose; the command was
		// not taken, so sending it to the new leader is safe.
		return a.fwd.unary(ctx, info.FullMethod, req)
	}
	// The node that ran the call records it, once: a follower that
	// forwarded it does not.
	if IsMutating(info.FullMethod) && !a.auditOff {
		a.audit(ctx, info.FullMethod, req, resp, err)
	}
	if err == nil {
		idx := sink.index.Load()
		if idx == 0 && a.reads != nil {
			idx = a.reads.AppliedIndex()
		}
		a.answerHeaders(ctx, idx)
	}
	return resp, err
}

// serveLinearizable confirms leadership and applies everything committed
// within the forward timeout, then reads; a follower forwards the read.
func (a *API) serveLinearizable(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler, forwarded bool) (any, error) {
	if !a.proposer.IsLeader() && !forwarded {
		return a.fwd.unary(ctx, info.FullMethod, req)
	}
	lctx, cancel := context.WithTimeout(ctx, a.forwardTimeout)
	err := a.proposer.LinearizableRead(lctx)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return nil, a.toStatus(ctx, ctx.Err())
		}
		if !forwarded && !errors.Is(err, context.DeadlineExceeded) {
			// Deposed meanwhile: the leader this node knows now answers.
			return a.fwd.unary(ctx, info.FullMethod, req)
		}
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, grpcutil.StaleReadError(a.otherLeader(), fmt.Sprintf(
				"this node could not confirm it leads within the forward timeout (%v); retry, at the leader if one is named", a.forwardTimeout),
				a.heartbeat)
		}
		return nil, a.toStatus(ctx, err)
	}
	return a.readLocal(ctx, req, handler)
}

// serveLocalRead answers a read from the local ledger once it is as fresh
// as the node's floor and the caller's ferry-min-index and
// ferry-max-staleness ask; otherwise it forwards the read to the leader or
// answers UNAVAILABLE (STALE_READ) with a retry hint.
func (a *API) serveLocalRead(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler, o grpcutil.ReadOptions, forwarded bool) (any, error) {
	if a.reads == nil {
		return handler(ctx, req)
	}
	if err := a.readiness(ctx, o, forwarded); err != nil {
		if errors.Is(err, errForward) {
			return a.fwd.unary(ctx, info.FullMethod, req)
		}
		return nil, err
	}
	return a.readLocal(ctx, req, handler)
}

// streamReadiness is readiness for a stream served here: never forwarded
// (the stream interceptor decides that), so a node behind answers
// STALE_READ.
func (a *API) streamReadiness(ctx context.Context) error {
	if a.reads == nil {
		return nil
	}
	o, err := grpcutil.IncomingReadOptions(ctx)
	if err != nil {
		return badReadOptions(err)
	}
	return a.readiness(ctx, o, true)
}

// readLocal runs a read and answers with the index it reflects. It reads
// again (twice at most) when the ledger moved meanwhile, so the index is
// the exact state read; otherwise it is a lower bound.
func (a *API) readLocal(ctx context.Context, req any, handler grpc.UnaryHandler) (any, error) {
	if a.reads == nil {
		return handler(ctx, req)
	}
	var (
		resp any
		err  error
		idx  uint64
	)
	for try := 0; try < 3; try++ {
		idx = a.reads.AppliedIndex()
		resp, err = handler(ctx, req)
		if err != nil || a.reads.AppliedIndex() == idx {
			break
		}
	}
	if err == nil {
		a.answerHeaders(ctx, idx)
	}
	return resp, err
}

// readiness says whether the local ledger may answer a read now, waiting
// up to half a heartbeat timeout for it to catch up.
func (a *API) readiness(ctx context.Context, o grpcutil.ReadOptions, forwarded bool) error {
	if o.MaxStaleness > 0 && !a.proposer.IsLeader() {
		if since := time.Since(a.reads.LastContact()); since > o.MaxStaleness {
			return a.notFreshEnough(forwarded, fmt.Sprintf("this node last heard from the leader %v ago, more than %s %v allows",
				since.Round(time.Millisecond), grpcutil.MaxStalenessHeader, o.MaxStaleness))
		}
	}
	floor := a.reads.ReadFloor()
	a.noteFloor(floor)
	need := max(floor, o.MinIndex)
	if a.reads.AppliedIndex() >= need {
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, a.catchUp)
	err := a.reads.WaitApplied(wctx, need)
	cancel()
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return a.toStatus(ctx, ctx.Err())
	}
	what := fmt.Sprintf("index %d that %s asks", need, grpcutil.MinIndexHeader)
	if need > o.MinIndex {
		what = fmt.Sprintf("index %d it may have served before it restarted", need)
	}
	return a.notFreshEnough(forwarded, fmt.Sprintf("this node has applied the ledger up to index %d, not yet the %s",
		a.reads.AppliedIndex(), what))
}

// noteFloor logs, once, when the ledger first reaches the read floor and
// local reads open; the first read before that logs that they wait.
func (a *API) noteFloor(floor uint64) {
	if a.floorReached.Load() {
		return
	}
	applied := a.reads.AppliedIndex()
	if applied >= floor {
		if a.floorReached.CompareAndSwap(false, true) {
			a.log.Info("local reads open: the ledger reached the read floor", "floor", floor, "applied", applied)
		}
		return
	}
	if a.floorWaitLogged.CompareAndSwap(false, true) {
		a.log.Info("local reads wait for the ledger to reach the read floor (the last log index before this start); until then they go to the leader",
			"floor", floor, "applied", applied)
	}
}

// notFreshEnough forwards the read to the leader when this node is a
// follower that knows one and the call was not forwarded already, and
// otherwise answers STALE_READ.
func (a *API) notFreshEnough(forwarded bool, why string) error {
	if leader := a.otherLeader(); leader != "" && !forwarded && a.fwd.dial != nil {
		return errForward
	}
	return grpcutil.StaleReadError(a.otherLeader(), why+"; retry, at the leader if one is named", a.heartbeat)
}

// otherLeader is the leader's API address when another node leads.
func (a *API) otherLeader() string {
	if a.proposer.IsLeader() {
		return ""
	}
	return a.proposer.LeaderAPIAddress()
}

// answerHeaders sets ferry-applied-index and ferry-node on the answer.
func (a *API) answerHeaders(ctx context.Context, index uint64) {
	_ = grpc.SetHeader(ctx, metadata.Pairs(
		grpcutil.AppliedIndexHeader, strconv.FormatUint(index, 10),
		grpcutil.NodeHeader, a.membership.ID()))
}

// badReadOptions is the INVALID_ARGUMENT answer to malformed headers.
func badReadOptions(err error) error {
	return status.Error(codes.InvalidArgument, err.Error())
}
