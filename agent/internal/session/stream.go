package session

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
)

// session holds one stream with addr until it ends; welcomed says whether
// the coordinator accepted it.
func (c *Client) session(ctx context.Context, addr string) (welcomed bool, err error) {
	cc, err := c.conn(addr)
	if err != nil {
		return false, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := agentv1.NewAgentServiceClient(cc).Connect(ctx)
	if err != nil {
		return false, err
	}
	welcome, err := c.hello(ctx, cancel, stream)
	if err != nil {
		return false, err
	}
	c.contact(addr, welcome)
	defer c.cutOff()
	if c.onSession != nil {
		c.onSession(true)
		defer c.onSession(false)
	}
	c.storagePaths(welcome.GetStoragePaths())
	interval := time.Duration(welcome.GetHeartbeatIntervalMs()) * time.Millisecond
	if interval <= 0 {
		interval = 2 * time.Second
	}
	c.log.Info("session open", "coordinator", addr, "coordinator_id", welcome.GetCoordinatorId(),
		"heartbeat", interval, "grace", time.Duration(welcome.GetGracePeriodMs())*time.Millisecond)

	// Each loop cancels the stream when it stops, so the other's blocked
	// Send or Recv returns too. A Send that fails with io.EOF means the
	// coordinator ended the stream: its status (a leader's address, say)
	// comes from Recv, so the receive loop is left to report it.
	var lastRecv atomic.Int64
	lastRecv.Store(time.Now().UnixNano())
	var lists sync.WaitGroup // inventory listings, which end with the stream
	defer lists.Wait()
	g := new(errgroup.Group)
	g.Go(func() error {
		defer cancel()
		return c.recvLoop(ctx, addr, stream, &lastRecv, &lists)
	})
	g.Go(func() error {
		err := c.sendLoop(ctx, stream, interval, &lastRecv)
		if errors.Is(err, io.EOF) {
			return nil
		}
		cancel()
		return err
	})
	return true, g.Wait()
}

// hello sends Hello and waits for Welcome, at most HelloTimeout.
func (c *Client) hello(ctx context.Context, cancel context.CancelFunc, stream agentv1.AgentService_ConnectClient) (*agentv1.Welcome, error) {
	timer := time.AfterFunc(c.cfg.HelloTimeout, cancel)
	defer timer.Stop()
	h := &agentv1.Hello{HostName: c.cfg.HostName, Cluster: c.cfg.Cluster, AgentVersion: c.cfg.AgentVersion,
		Facts: c.currentFacts(ctx), HeldJobs: c.held()}
	if err := stream.Send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Hello{Hello: h}}); err != nil {
		_, err = stream.Recv() // the real error is the stream's status
		return nil, err
	}
	msg, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	w := msg.GetWelcome()
	if w == nil {
		return nil, fmt.Errorf("coordinator answered hello with %T, not welcome", msg.GetKind())
	}
	return w, nil
}

// recvLoop carries out what the coordinator sends. Listing a source's VMs
// may take a while: it runs beside the loop and answers through the outbox.
func (c *Client) recvLoop(ctx context.Context, addr string, stream agentv1.AgentService_ConnectClient,
	lastRecv *atomic.Int64, lists *sync.WaitGroup) error {
	for {
		msg, err := stream.Recv()
		if err != nil {
			return err
		}
		lastRecv.Store(time.Now().UnixNano())
		c.contact(addr, nil)
		switch k := msg.GetKind().(type) {
		case *agentv1.ConnectResponse_Assignment:
			a := k.Assignment
			if err := c.runner.Start(a); err != nil {
				c.log.Warn("cannot start assignment", "job", a.GetJob().GetName(), "epoch", a.GetEpoch(), "err", err)
			}
		case *agentv1.ConnectResponse_Cancellation:
			x := k.Cancellation
			if !c.runner.Cancel(x.GetJob(), x.GetEpoch(), x.GetReason()) {
				c.log.Debug("cancellation of a job not running here", "job", x.GetJob(), "epoch", x.GetEpoch())
			}
		case *agentv1.ConnectResponse_Cutover:
			x := k.Cutover
			var at time.Time
			if x.GetCutoverTime() != nil {
				at = x.GetCutoverTime().AsTime()
			}
			if !c.runner.Cutover(x.GetJob(), x.GetEpoch(), at) {
				c.log.Debug("cutover of a warm job not running here", "job", x.GetJob(), "epoch", x.GetEpoch())
			}
		case *agentv1.ConnectResponse_BandwidthLimits:
			c.runner.SetLimits(k.BandwidthLimits)
		case *agentv1.ConnectResponse_InventoryRequest:
			lists.Add(1)
			go func() {
				defer lists.Done()
				c.outbox.queue(c.inventory(ctx, k.InventoryRequest))
			}()
		case *agentv1.ConnectResponse_FenceAnswer:
			if c.fences != nil {
				c.fences.answer(k.FenceAnswer)
			}
		case *agentv1.ConnectResponse_BundleSignature:
			if c.signer != nil {
				c.signer.answer(k.BundleSignature)
			}
		case *agentv1.ConnectResponse_TargetAnswer:
			if c.targets != nil {
				c.targets.answer(k.TargetAnswer)
			}
		case *agentv1.ConnectResponse_TargetWork:
			lists.Add(1)
			go func() {
				defer lists.Done()
				c.outbox.queue(c.targetWork(ctx, k.TargetWork))
			}()
		case *agentv1.ConnectResponse_Heartbeat:
			c.storagePaths(k.Heartbeat.GetStoragePaths())
			c.setGrace(time.Duration(k.Heartbeat.GetGracePeriodMs()) * time.Millisecond)
		default:
			c.log.Warn("unexpected message from coordinator", "kind", fmt.Sprintf("%T", msg.GetKind()))
		}
	}
}

// targetWork carries out work for a job placed on this host; the answer
// goes through the outbox, so it reaches the leader of the next session
// when this one ends first.
func (c *Client) targetWork(ctx context.Context, w *agentv1.TargetWork) *agentv1.ConnectRequest {
	var res *agentv1.TargetWorkResult
	if c.worker == nil {
		res = &agentv1.TargetWorkResult{RequestId: w.GetRequestId(), Job: w.GetJob().GetName(), Epoch: w.GetEpoch(), Action: w.GetAction(),
			Error: "this agent does not serve as a target host"}
	} else {
		res = c.worker.Do(ctx, w)
	}
	return &agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_TargetWorkResult{TargetWorkResult: res}}
}

// sendLoop sends heartbeats (with fresh facts when there are some) and what
// the runner reported, and ends the session after three silent intervals.
func (c *Client) sendLoop(ctx context.Context, stream agentv1.AgentService_ConnectClient, interval time.Duration, lastRecv *atomic.Int64) error {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	sentFacts := c.factsSerial.Load()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-c.outbox.wake:
			msgs := c.outbox.take()
			for i, m := range msgs {
				if err := stream.Send(m); err != nil {
					c.outbox.putBack(msgs[i:])
					return err
				}
			}
		case <-tick.C:
			if quiet := time.Since(time.Unix(0, lastRecv.Load())); quiet > missedHeartbeats*interval {
				return errors.New("no message from the coordinator for " + quiet.Round(time.Millisecond).String())
			}
			hb := &agentv1.Heartbeat{Time: timestamppb.Now()}
			if serial := c.factsSerial.Load(); serial != sentFacts {
				if f := c.latest.Load(); f != nil {
					hb.Facts, sentFacts = cloneFacts(f), serial
				}
			}
			if err := stream.Send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Heartbeat{Heartbeat: hb}}); err != nil {
				return err
			}
		}
	}
}

// inventory reads a source's inventory for the coordinator.
func (c *Client) inventory(ctx context.Context, req *agentv1.InventoryRequest) *agentv1.ConnectRequest {
	resp := &agentv1.InventoryResponse{RequestId: req.GetRequestId()}
	inv, err := c.runner.Inventory(ctx, req)
	if err != nil {
		c.log.Info("reading the source's inventory failed", "source", req.GetSource().GetName(), "err", err)
		resp.Error = err.Error()
	}
	resp.Inventory = inv
	return &agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_InventoryResponse{InventoryResponse: resp}}
}
