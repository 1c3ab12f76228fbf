package session

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	"github.com/ferry-v2v/ferry/pkg/bundle"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// maxManifestBytes bounds a manifest the leader reads before signing it.
const maxManifestBytes = 1 << 20

// signBundle answers an agent's SignBundle. The cluster's private key
// never leaves the coordinators: the leader signs only for an export job
// running under the request's epoch on the asking host (as the fence,
// after a linearizable read), and only a manifest naming that job, its
// source and its source VM. When the read fails (this node lost the lead)
// no answer is sent: the agent asks again, on this or the next leader's
// session.
func (m *Manager) signBundle(ctx context.Context, s *session, req *agentv1.SignBundle) error {
	if l, ok := m.raft.(linearizer); ok {
		rctx, cancel := context.WithTimeout(ctx, m.cfg.ProposeTimeout)
		err := l.LinearizableRead(rctx)
		cancel()
		if err != nil {
			m.log.Warn("cannot check an export before signing its bundle", "host", s.host, "job", req.GetJob(), "epoch", req.GetEpoch(), "err", err)
			return nil
		}
	}
	ans := &agentv1.BundleSignature{RequestId: req.GetRequestId()}
	if reason := m.refuseSigning(s.host, req); reason != "" {
		ans.Error = reason
		m.log.Warn("refused to sign a bundle", "host", s.host, "job", req.GetJob(), "epoch", req.GetEpoch(), "reason", reason)
		return s.send(ctx, &agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_BundleSignature{BundleSignature: ans}})
	}
	key, err := m.bundleKey(ctx)
	if err != nil {
		// Not the agent's fault, and maybe passing (a lost lead): no
		// answer, the agent asks again.
		m.log.Error("cannot sign a bundle", "host", s.host, "job", req.GetJob(), "err", err)
		return nil
	}
	pub := key.Public().(ed25519.PublicKey)
	ans.Signature, ans.PublicKey, ans.KeyId = bundle.Sign(req.GetManifest(), key), pub, bundle.KeyID(pub)
	m.log.Info("signed a bundle", "host", s.host, "job", req.GetJob(), "epoch", req.GetEpoch(), "key_id", ans.KeyId)
	return s.send(ctx, &agentv1.ConnectResponse{Kind: &agentv1.ConnectResponse_BundleSignature{BundleSignature: ans}})
}

// refuseSigning says why host may not have req's manifest signed; empty
// when it may.
func (m *Manager) refuseSigning(host string, req *agentv1.SignBundle) string {
	j, ok := m.ledger.Job(req.GetJob())
	switch {
	case !ok:
		return "job no longer exists"
	case j.GetExport() == nil:
		return "job " + j.GetName() + " is not an export: only an export's bundle is signed"
	case j.GetState() != stateRunning:
		return "job is " + j.GetState().String()
	case j.GetEpoch() != req.GetEpoch() || HostName(j.GetAssignedHost()) != host:
		return fmt.Sprintf("assignment superseded: job runs under epoch %d on %s", j.GetEpoch(), j.GetAssignedHost())
	case len(req.GetManifest()) > maxManifestBytes:
		return fmt.Sprintf("manifest is %d bytes, at most %d", len(req.GetManifest()), maxManifestBytes)
	}
	mf, err := bundle.ParseManifest(req.GetManifest())
	if err != nil {
		return err.Error()
	}
	return manifestMismatch(mf, j)
}

// manifestMismatch says which field of mf does not name job j, its source
// or its source VM; empty when all do.
func manifestMismatch(mf *bundle.Manifest, j *ferryv1.MigrationJob) string {
	switch {
	case mf.Job != j.GetName():
		return fmt.Sprintf("manifest job is %q, not %s", mf.Job, j.GetName())
	case mf.Source.Name != j.GetSource():
		return fmt.Sprintf("manifest source.name is %q, not the job's source %s", mf.Source.Name, j.GetSource())
	case mf.Source.VM != j.GetSourceVm():
		return fmt.Sprintf("manifest source.vm is %q, not the job's source VM %q", mf.Source.VM, j.GetSourceVm())
	}
	var vm ferryv1.SourceVm
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(mf.VM, &vm); err != nil {
		return "manifest vm: " + err.Error()
	}
	if ref := j.GetSourceVm(); vm.GetId() != ref && vm.GetUuid() != ref && vm.GetName() != ref {
		return fmt.Sprintf("manifest vm is %q (id %q), not the job's source VM %q", vm.GetName(), vm.GetId(), ref)
	}
	return ""
}

// bundleKey returns the cluster's bundle signing key, making and recording
// it first when there is none (the leader does at the start of its term,
// and here at the first signing): the seed is sealed before it enters
// the log, as a credential's secret. Two leaders racing both read the
// first one recorded.
func (m *Manager) bundleKey(ctx context.Context) (ed25519.PrivateKey, error) {
	if m.seal == nil {
		return nil, fmt.Errorf("bundle signing key: this coordinator has no sealing key")
	}
	k, ok := m.ledger.BundleSigningKey()
	if !ok {
		if err := m.makeBundleKey(ctx); err != nil {
			return nil, err
		}
		if k, ok = m.ledger.BundleSigningKey(); !ok {
			return nil, fmt.Errorf("bundle signing key: %w", ledger.ErrNotFound)
		}
	}
	seed, err := m.seal.Open(k.GetSealedPrivateKey(), []byte(ledger.BundleKeyAAD))
	if err != nil {
		return nil, fmt.Errorf("unseal the bundle signing key: %w", err)
	}
	if len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("bundle signing key: seed of %d bytes", len(seed))
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

// ensureBundleKey makes the key at the start of a term, and reports
// whether the cluster has one.
func (m *Manager) ensureBundleKey(ctx context.Context) bool {
	if m.seal == nil {
		return true // nothing to make it with; signing says so
	}
	if err := m.makeBundleKey(ctx); err != nil {
		m.log.Warn("cannot make the bundle signing key yet", "err", err)
		return false
	}
	return true
}

// makeBundleKey records a new bundle signing key unless one exists.
func (m *Manager) makeBundleKey(ctx context.Context) error {
	if _, ok := m.ledger.BundleSigningKey(); ok {
		return nil
	}
	if m.seal == nil {
		return fmt.Errorf("bundle signing key: this coordinator has no sealing key")
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	sealed, err := m.seal.Seal(priv.Seed(), []byte(ledger.BundleKeyAAD))
	if err != nil {
		return fmt.Errorf("seal the bundle signing key: %w", err)
	}
	err = m.propose(ctx, &ledgerv1.Command{Op: &ledgerv1.Command_SetBundleSigningKey{SetBundleSigningKey: &ledgerv1.SetBundleSigningKey{
		SealedPrivateKey: sealed, PublicKey: pub}}})
	if err != nil {
		return fmt.Errorf("record the bundle signing key: %w", err)
	}
	if k, ok := m.ledger.BundleSigningKey(); ok {
		m.log.Info("bundle signing key made", "key_id", bundle.KeyID(ed25519.PublicKey(k.GetPublicKey())))
	}
	return nil
}
