package consensus

import (
	"context"
	"sync"

	"google.golang.org/protobuf/proto"

	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
)

// leadership fans Raft's leadership changes out to any number of
// subscribers. Each subscriber has a one-slot channel that always holds
// the latest state, so a slow subscriber sees the newest value and never
// blocks Raft or the other subscribers.
type leadership struct {
	mu     sync.Mutex
	leader bool
	subs   map[chan bool]struct{}
	closed bool
}

// subscribe returns a channel that first receives the current state.
func (l *leadership) subscribe() (<-chan bool, func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ch := make(chan bool, 1)
	if l.closed {
		close(ch)
		return ch, func() {}
	}
	if l.subs == nil {
		l.subs = make(map[chan bool]struct{})
	}
	l.subs[ch] = struct{}{}
	ch <- l.leader
	var once sync.Once
	return ch, func() { once.Do(func() { l.unsubscribe(ch) }) }
}

func (l *leadership) unsubscribe(ch chan bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.subs[ch]; ok {
		delete(l.subs, ch)
		close(ch)
	}
}

// publish replaces every subscriber's pending value with leader.
func (l *leadership) publish(leader bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.leader = leader
	for ch := range l.subs {
		select {
		case <-ch:
		default:
		}
		ch <- leader
	}
}

// close publishes false and closes every subscriber's channel.
func (l *leadership) close() {
	l.publish(false)
	l.mu.Lock()
	defer l.mu.Unlock()
	for ch := range l.subs {
		close(ch)
	}
	l.subs = nil
	l.closed = true
}

// SubscribeLeadership returns a channel of leadership changes of this
// node and a cancel func that closes it. The channel first carries the
// current state, then each change; it holds only the latest value, so a
// slow reader skips intermediate flips. It is closed by cancel or by
// Shutdown (after a final false).
func (n *Node) SubscribeLeadership() (ch <-chan bool, cancel func()) {
	return n.leadership.subscribe()
}

// watchLeadership forwards Raft's notifications to subscribers and, on
// each election win, records this node's addresses in the ledger.
func (n *Node) watchLeadership() {
	defer n.wg.Done()
	stopRegister := func() {}
	defer func() { stopRegister() }()
	for {
		select {
		case <-n.ctx.Done():
			return
		case leader := <-n.notifyCh:
			n.log.Info("leadership changed", "leader", leader)
			n.leadership.publish(leader)
			stopRegister()
			if leader {
				ctx, cancel := context.WithCancel(n.ctx)
				stopRegister = cancel
				n.wg.Add(1)
				go n.registerSelf(ctx)
			}
		}
	}
}

// registerSelf proposes PutNode for this node unless the ledger already
// holds its current addresses, so followers can resolve the leader's API
// address.
func (n *Node) registerSelf(ctx context.Context) {
	defer n.wg.Done()
	if n.cfg.NodeLookup == nil || n.cfg.APIAddress == "" {
		return
	}
	// Apply everything earlier leaders committed before reading the ledger.
	if err := n.Barrier(ctx); err != nil {
		n.log.Debug("skip recording leader address", "err", err)
		return
	}
	want := &ledgerv1.Node{Id: n.cfg.NodeID, ApiAddress: n.cfg.APIAddress, RaftAddress: n.RaftAddress()}
	if have, ok := n.cfg.NodeLookup(n.cfg.NodeID); ok && proto.Equal(have, want) {
		return
	}
	cmd := &ledgerv1.Command{Op: &ledgerv1.Command_PutNode{PutNode: &ledgerv1.PutNode{Node: want}}}
	if _, err := n.Propose(ctx, cmd); err != nil {
		n.log.Warn("record leader address in ledger", "err", err)
		return
	}
	n.log.Info("recorded leader address in ledger", "api_address", want.ApiAddress)
}
