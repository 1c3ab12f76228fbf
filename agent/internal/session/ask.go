package session

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"sync"
	"time"

	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
)

// answer is what the leader sends back for a request the agent made on its
// session: it carries the request's ID.
type answer interface{ GetRequestId() string }

// asker sends the agent's requests to the leader on the session and hands
// each answer to the request waiting for it, by request ID. A request not
// answered within retry is asked again under a new ID, on this session or
// the next, until ctx ends: a leader change or a reconnect only delays it.
// Fence checks, target requests and bundle signatures are all asked this
// way.
type asker[A answer] struct {
	outbox *Outbox
	retry  time.Duration
	// always queues a request while the agent has no session too (the
	// outbox sends it on the next one); otherwise it waits unsent until
	// its retry.
	always bool

	mu        sync.Mutex
	connected bool
	waiting   map[string]chan A
}

func newAsker[A answer](outbox *Outbox, retry time.Duration, always bool) *asker[A] {
	return &asker[A]{outbox: outbox, retry: retry, always: always, waiting: map[string]chan A{}}
}

// once asks the request request(id) makes under a fresh ID and waits up to
// the retry interval: got says whether the answer came, sent whether the
// request was sent (the agent had a session), err is ctx's when it ended.
func (a *asker[A]) once(ctx context.Context, request func(id string) *agentv1.ConnectRequest) (ans A, got, sent bool, err error) {
	id := newRequestID()
	ch := make(chan A, 1)
	a.mu.Lock()
	a.waiting[id] = ch
	sent = a.connected || a.always
	a.mu.Unlock()
	if sent {
		a.outbox.queue(request(id))
	}
	t := time.NewTimer(a.retry)
	select {
	case ans = <-ch:
		got = true
	case <-t.C:
	case <-ctx.Done():
	}
	t.Stop()
	a.mu.Lock()
	delete(a.waiting, id)
	a.mu.Unlock()
	if !got && ctx.Err() != nil {
		err = ctx.Err()
	}
	return ans, got, sent, err
}

// answer delivers ans to the request waiting for it, if one still waits.
func (a *asker[A]) answer(ans A) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if ch, ok := a.waiting[ans.GetRequestId()]; ok {
		ch <- ans
		delete(a.waiting, ans.GetRequestId())
	}
}

func (a *asker[A]) setConnected(v bool) {
	a.mu.Lock()
	a.connected = v
	a.mu.Unlock()
}

func newRequestID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
