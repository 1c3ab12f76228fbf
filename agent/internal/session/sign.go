package session

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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
	*asker[*agentv1.BundleSignature]
	log *slog.Logger
}

// NewSigner returns the signer; the session Client must get it in its
// Deps, to deliver answers and say when it is connected.
func NewSigner(outbox *Outbox, log *slog.Logger) *Signer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Signer{asker: newAsker[*agentv1.BundleSignature](outbox, DefaultSignRetry, false), log: log.With("component", "signer")}
}

// SignBundle returns the leader's signature of manifest for job's
// assignment under epoch, and the public key that makes it; an error
// wrapping ErrSignRefused with the leader's reason, or ctx's error.
func (s *Signer) SignBundle(ctx context.Context, job string, epoch int64, manifest []byte) (signature, publicKey []byte, err error) {
	start := time.Now()
	for attempt := 1; ; attempt++ {
		ans, got, sent, err := s.once(ctx, func(id string) *agentv1.ConnectRequest {
			return &agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_SignBundle{SignBundle: &agentv1.SignBundle{
				RequestId: id, Job: job, Epoch: epoch, Manifest: manifest}}}
		})
		switch {
		case got && ans.GetError() != "":
			s.log.Warn("the leader refused to sign a bundle", "job", job, "epoch", epoch, "reason", ans.GetError())
			return nil, nil, fmt.Errorf("%w: %s", ErrSignRefused, ans.GetError())
		case got:
			s.log.Info("bundle signed by the leader", "job", job, "epoch", epoch, "key_id", ans.GetKeyId(),
				"waited", time.Since(start).Round(time.Millisecond))
			return ans.GetSignature(), ans.GetPublicKey(), nil
		case err != nil:
			return nil, nil, err
		}
		s.log.Info("waiting for the leader to sign a bundle", "job", job, "epoch", epoch, "attempt", attempt, "connected", sent)
	}
}

func (s *Signer) setConnected(v bool) {
	if s != nil {
		s.asker.setConnected(v)
	}
}
