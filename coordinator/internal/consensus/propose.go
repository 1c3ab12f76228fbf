package consensus

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferry-v2v/ferry/coordinator/internal/fsm"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
)

// Propose replicates cmd and returns the FSM's result once this node has
// applied it. It stamps cmd.Time with the leader's clock when unset.
//
// On a follower it fails with ErrNotLeader. If the command was committed
// but the FSM rejected it, err is res.Err itself (unwrapped, so ledger
// sentinels reach the API layer) and res is returned too.
//
// ctx's deadline (or Config.ApplyTimeout) bounds the whole call. When ctx
// ends after the command was handed to Raft, Propose returns ctx's error
// but the command may still be committed.
func (n *Node) Propose(ctx context.Context, cmd *ledgerv1.Command) (fsm.Result, error) {
	if cmd.GetTime() == nil {
		cmd.Time = timestamppb.Now()
	}
	data, err := fsm.Encode(cmd)
	if err != nil {
		return fsm.Result{}, fmt.Errorf("encode command: %w", err)
	}
	resp, err := n.ProposeBytes(ctx, data)
	if err != nil {
		return fsm.Result{}, err
	}
	res, ok := resp.(fsm.Result)
	if !ok {
		return fsm.Result{}, fmt.Errorf("propose: FSM answered %T, want fsm.Result", resp)
	}
	return res, res.Err
}

// ProposeBytes replicates an encoded command and returns whatever the
// FSM's Apply returned for it. See Propose.
func (n *Node) ProposeBytes(ctx context.Context, data []byte) (any, error) {
	timeout, err := n.timeout(ctx)
	if err != nil {
		return nil, fmt.Errorf("propose: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	f := n.raft.Apply(data, timeout)
	if err := n.await(ctx, f); err != nil {
		return nil, fmt.Errorf("propose: %w", err)
	}
	if n.cfg.OnApply != nil {
		n.cfg.OnApply(time.Since(start))
	}
	return f.Response(), nil
}

// VerifyLeader confirms with a quorum that this node is still the leader.
func (n *Node) VerifyLeader(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("verify leader: %w", err)
	}
	if err := n.await(ctx, n.raft.VerifyLeader()); err != nil {
		return fmt.Errorf("verify leader: %w", err)
	}
	return nil
}

// Barrier waits until every command committed before it has been applied
// to this node's FSM. It works only on the leader.
func (n *Node) Barrier(ctx context.Context) error {
	timeout, err := n.timeout(ctx)
	if err != nil {
		return fmt.Errorf("barrier: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := n.await(ctx, n.raft.Barrier(timeout)); err != nil {
		return fmt.Errorf("barrier: %w", err)
	}
	return nil
}

// LinearizableRead returns nil when a read of the local ledger made right
// after it observes every write acknowledged before it was called: this
// node verifies it is the leader, then applies everything committed
// (including entries of earlier terms) with a Barrier. On a follower it
// fails with ErrNotLeader. It costs one replicated no-op entry, batched
// with concurrent writes.
func (n *Node) LinearizableRead(ctx context.Context) error {
	if err := n.VerifyLeader(ctx); err != nil {
		return err
	}
	return n.Barrier(ctx)
}

// await waits until Raft answers f, ctx ends or the node shuts down, and
// maps Raft's errors. Raft futures cannot be cancelled and, with
// BatchApplyCh, Raft never answers those still queued in its apply
// channel when it shuts down, so the wait happens in a helper goroutine
// that ends when Raft answers; the few stranded at Shutdown (at most
// MaxAppendEntries) end with the process.
func (n *Node) await(ctx context.Context, f raft.Future) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		return n.mapErr(err)
	case <-ctx.Done():
		return fmt.Errorf("%w; the request may still take effect", ctx.Err())
	case <-n.ctx.Done():
		return ErrShutdown
	}
}

// timeout derives a Raft timeout from ctx, or the configured default.
func (n *Node) timeout(ctx context.Context) (time.Duration, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		return n.cfg.ApplyTimeout, nil
	}
	d := time.Until(deadline)
	if d <= 0 {
		return 0, context.DeadlineExceeded
	}
	return d, nil
}

// mapErr turns hashicorp/raft errors into this package's sentinels,
// keeping the original in the chain.
func (n *Node) mapErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipTransferInProgress),
		errors.Is(err, raft.ErrNotVoter):
		id, _ := n.Leader()
		return fmt.Errorf("%w (leader %q): %w", ErrNotLeader, id, err)
	case errors.Is(err, raft.ErrLeadershipLost), errors.Is(err, raft.ErrAbortedByRestore):
		return fmt.Errorf("%w: %w", ErrLeadershipLost, err)
	case errors.Is(err, raft.ErrRaftShutdown):
		return fmt.Errorf("%w: %w", ErrShutdown, err)
	case errors.Is(err, raft.ErrEnqueueTimeout):
		return fmt.Errorf("%w: %w", ErrTimeout, err)
	}
	return err
}
