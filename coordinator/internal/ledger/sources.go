package ledger

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// Source returns a copy of the named source.
func (l *Ledger) Source(name string) (*ferryv1.Source, bool) { return get(l, l.sources, name) }

// Sources lists sources, of one type unless unspecified.
func (l *Ledger) Sources(typ ferryv1.Platform) []*ferryv1.Source {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return filtered(l.sources, func(s *ferryv1.Source) bool {
		return typ == ferryv1.Platform_PLATFORM_UNSPECIFIED || s.GetType() == typ
	})
}

// PutSource creates a source whose credentials exist.
func (l *Ledger) PutSource(s *ferryv1.Source, requestID string, now time.Time) ([]string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range sourceCredentials(s) {
		if _, ok := l.credentials[c]; !ok {
			return nil, fmt.Errorf("credential %s: %w", c, ErrNotFound)
		}
	}
	return create(l, l.sources, s, requestID, now, func() { s.CreateTime = timestamppb.New(now) })
}

func sourceCredentials(s *ferryv1.Source) []string {
	var out []string
	for _, c := range []string{s.GetVcenter().GetCredential(), s.GetKvm().GetCredential(), s.GetKvm().GetSaslCredential()} {
		if c != "" {
			out = append(out, c)
		}
	}
	return out
}

// DeleteSource deletes a source no unfinished job reads from.
func (l *Ledger) DeleteSource(name string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.deleteSourceRefusal(name); err != nil {
		return err
	}
	if g := l.mappingGroupUsing(name); g != "" {
		return fmt.Errorf("%w: network mapping group %s is for source %s; delete it first", ErrFailedPrecondition, g, name)
	}
	delete(l.sources, name)
	delete(l.inventories, name)
	return nil
}

// RecordSourceHostKey records the SSH host key first seen for a KVM source
// (trust on first use). A different key than the one recorded is refused.
func (l *Ledger) RecordSourceHostKey(name, key string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, ok := l.sources[name]
	if !ok || s.GetKvm() == nil {
		return fmt.Errorf("KVM source %s: %w", name, ErrNotFound)
	}
	if old := s.GetKvm().GetObservedHostKey(); old != "" && old != key {
		return fmt.Errorf("%w: source %s presented a host key different from the one recorded on first use", ErrFailedPrecondition, name)
	}
	s = clone(s)
	s.Kvm.ObservedHostKey = key
	l.sources[name] = s
	return nil
}

// Credential returns a copy of a sealed credential.
func (l *Ledger) Credential(name string) (*ledgerv1.SealedCredential, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	c, ok := l.credentials[name]
	if !ok {
		return nil, false
	}
	return clone(c), true
}

// Credentials lists the sealed credentials by name.
func (l *Ledger) Credentials() []*ledgerv1.SealedCredential {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return sortedClones(l.credentials)
}

// PutCredential stores a sealed credential.
func (l *Ledger) PutCredential(c *ledgerv1.SealedCredential, requestID string, now time.Time) ([]string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if names, ok := l.seenRequest(requestID); ok {
		return names, nil
	}
	name := c.GetCredential().GetName()
	if _, ok := l.credentials[name]; ok {
		return nil, fmt.Errorf("%s: %w", name, ErrExists)
	}
	c.GetCredential().Secret = ""
	c.GetCredential().CreateTime = timestamppb.New(now)
	l.credentials[name] = c
	l.recordRequest(requestID, []string{name}, now)
	return []string{name}, nil
}

// DeleteCredential deletes a credential no source uses.
func (l *Ledger) DeleteCredential(name string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.deleteCredentialRefusal(name); err != nil {
		return err
	}
	delete(l.credentials, name)
	return nil
}
