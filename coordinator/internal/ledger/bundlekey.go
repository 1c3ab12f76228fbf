package ledger

import (
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
)

// BundleKeyAAD is the additional data the bundle signing key's seed is
// sealed with, so that a sealed credential can never pass for it.
const BundleKeyAAD = "bundleSigningKey"

// SetBundleSigningKey records the cluster's bundle signing key (sealed
// seed and public key) unless one is recorded already: the first key
// made stays, so two leaders racing to make one agree on it.
func (l *Ledger) SetBundleSigningKey(k *ledgerv1.SetBundleSigningKey) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.bundleKey == nil && len(k.GetPublicKey()) > 0 {
		l.bundleKey = clone(k)
	}
	return nil
}

// BundleSigningKey is the recorded bundle signing key, sealed; false when
// none was made yet.
func (l *Ledger) BundleSigningKey() (*ledgerv1.SetBundleSigningKey, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.bundleKey == nil {
		return nil, false
	}
	return clone(l.bundleKey), true
}
