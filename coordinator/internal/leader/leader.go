// Package leader is the one place a coordinator starts and stops the work
// only a leader does. On gaining leadership it waits for a Raft barrier
// (every command of earlier terms applied), then runs each Duty for the
// term; on losing it, it stops them all, waits for them, and tells each
// Follower. No leader-only loop watches leadership, or polls for it, by
// itself.
package leader

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Duty is leader-only work: Lead runs it for one term and returns when
// ctx ends (leadership lost or the node stopping).
type Duty interface {
	Lead(ctx context.Context)
}

// DutyFunc is a function that is a Duty.
type DutyFunc func(ctx context.Context)

// Lead calls f.
func (f DutyFunc) Lead(ctx context.Context) { f(ctx) }

// Follower is told, after its term's Lead has returned, that this node no
// longer leads, to drop what only a leader may hold.
type Follower interface {
	Follow()
}

// Node is the Raft node whose leadership is followed.
type Node interface {
	// SubscribeLeadership carries the current state first, then each
	// change; it is closed when the node stops.
	SubscribeLeadership() (<-chan bool, func())
	// Barrier returns once every command committed before it is applied.
	Barrier(ctx context.Context) error
}

// barrierRetry spaces barrier attempts at the start of a term.
const barrierRetry = 200 * time.Millisecond

// Run runs duties in every term this node leads, until ctx ends or the
// node stops; then it stops the current term and returns.
func Run(ctx context.Context, n Node, log *slog.Logger, duties ...Duty) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "leader")
	ch, unsubscribe := n.SubscribeLeadership()
	defer unsubscribe()
	var term sync.WaitGroup
	stop := func() {}
	endTerm := func() {
		stop()
		term.Wait()
		stop = func() {}
	}
	defer endTerm()
	leading := false
	for {
		select {
		case <-ctx.Done():
			return
		case l, ok := <-ch:
			if !ok {
				return
			}
			if l == leading {
				continue
			}
			endTerm()
			leading = l
			if !l {
				log.Info("leadership lost: leader duties stopped")
				for _, d := range duties {
					if f, ok := d.(Follower); ok {
						f.Follow()
					}
				}
				continue
			}
			termCtx, cancel := context.WithCancel(ctx)
			stop = cancel
			term.Add(1)
			go func() {
				defer term.Done()
				lead(termCtx, n, log, duties)
			}()
		}
	}
}

// lead runs one term: the barrier, then every duty until ctx ends.
func lead(ctx context.Context, n Node, log *slog.Logger, duties []Duty) {
	for {
		err := n.Barrier(ctx)
		if err == nil {
			break
		}
		log.Debug("barrier at the start of a term", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(barrierRetry):
		}
	}
	log.Info("leading: leader duties started", "duties", len(duties))
	var wg sync.WaitGroup
	for _, d := range duties {
		wg.Go(func() { d.Lead(ctx) })
	}
	wg.Wait()
}
