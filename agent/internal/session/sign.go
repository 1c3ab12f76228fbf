package session

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
)

// DefaultSignRetry is how long a signature request waits for its answer
// before it is asked again (on the current session, or the next one).
const DefaultSignRetry = 5 * time.Second

// ErrSignRefused: the leader refused to sign a bundle's manifest.
var ErrSignRefused = errors.New("bundle signature refused")

// Signer has export bundles' manifests signed by the leader (export.
// Signer): the cluster's private key never leaves the coordinators. As a
// fence check, a request waits while the agent has no session and is
// asked again when unanswered, so a leader change or a reconnect only
// delays the signature; a job cut off for too long is stopped by the
// session's watchdog.
type Signer struct {
	outbox *Outbox
	log    *slog.Logger
	retry  time.Duration

	mu        sync.Mutex
	connected bool
	waiting   map[string]chan *agentv1.BundleSignature
}

// NewSigner returns the signer; the session Client must get it in its
// Deps, to deliver answers and say when it is connected.
func NewSigner(outbox *Outbox, log *slog.Logger) *Signer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Signer{outbox: outbox, log: log.With("component", "signer"), retry: DefaultSignRetry,
		waiting: map[string]chan *agentv1.BundleSignature{}}
}

// SignBundle returns the leader's signature of manifest for job's
// assignment under epoch, and the public key that makes it; an error
// wrapping ErrSignRefused with the leader's reason, or ctx's error.
func (s *Signer) SignBundle(ctx context.Context, job string, epoch int64, manifest []byte) (signature, publicKey []byte, err error) {
	start := time.Now()
	for attempt := 1; ; attempt++ {
		id := newRequestID()
		ch := make(chan *agentv1.BundleSignature, 1)
		s.mu.Lock()
		s.waiting[id] = ch
		connected := s.connected
		s.mu.Unlock()
		if connected {
			s.outbox.queue(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_SignBundle{SignBundle: &agentv1.SignBundle{
				RequestId: id, Job: job, Epoch: epoch, Manifest: manifest}}})
		}
		t := time.NewTimer(s.retry)
		var ans *agentv1.BundleSignature
		select {
		case ans = <-ch:
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
		s.mu.Lock()
		delete(s.waiting, id)
		s.mu.Unlock()
		switch {
		case ans != nil && ans.GetError() != "":
			s.log.Warn("the leader refused to sign a bundle", "job", job, "epoch", epoch, "reason", ans.GetError())
			return nil, nil, fmt.Errorf("%w: %s", ErrSignRefused, ans.GetError())
		case ans != nil:
			s.log.Info("bundle signed by the leader", "job", job, "epoch", epoch, "key_id", ans.GetKeyId(),
				"waited", time.Since(start).Round(time.Millisecond))
			return ans.GetSignature(), ans.GetPublicKey(), nil
		case ctx.Err() != nil:
			return nil, nil, ctx.Err()
		}
		s.log.Info("waiting for the leader to sign a bundle", "job", job, "epoch", epoch, "attempt", attempt, "connected", connected)
	}
}

// answer delivers a BundleSignature to its waiter, if it still waits.
func (s *Signer) answer(a *agentv1.BundleSignature) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ch, ok := s.waiting[a.GetRequestId()]; ok {
		ch <- a
		delete(s.waiting, a.GetRequestId())
	}
}

func (s *Signer) setConnected(v bool) {
	if s == nil {
		return
	}
	s.mu.Lock()
	s.connected = v
	s.mu.Unlock()
}
