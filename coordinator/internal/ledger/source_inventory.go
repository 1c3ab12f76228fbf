package ledger

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// SourceInventory returns a copy of what the last successful sync of a
// source found.
func (l *Ledger) SourceInventory(source string) (*ferryv1.SourceInventory, bool) {
	return get(l, l.inventories, source)
}

// HasSourceInventory says whether a source was ever synced successfully,
// without copying its inventory.
func (l *Ledger) HasSourceInventory(source string) bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	_, ok := l.inventories[source]
	return ok
}

// RecordSourceSync records how a sync of a source ended. A successful one
// replaces the source's inventory, stamped with now, and its product; a
// failed one records the error and keeps the inventory it had.
func (l *Ledger) RecordSourceSync(c *ledgerv1.RecordSourceSync, now time.Time) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	name := c.GetSource()
	s, ok := l.sources[name]
	if !ok {
		return fmt.Errorf("source %s: %w", name, ErrNotFound)
	}
	s = clone(s)
	at := timestamppb.New(now)
	s.LastSyncAttemptTime = at
	if c.GetError() != "" {
		s.LastSyncError = c.GetError()
		l.sources[name] = s
		return nil
	}
	inv := clone(c.GetInventory())
	if inv == nil {
		inv = &ferryv1.SourceInventory{}
	}
	inv.Source, inv.SyncTime = name, at
	l.inventories[name] = inv
	s.LastSyncTime, s.LastSyncError, s.Product = at, "", clone(inv.GetProduct())
	s.Capabilities = nil
	for _, c := range inv.GetCapabilities() {
		s.Capabilities = append(s.Capabilities, clone(c))
	}
	l.sources[name] = s
	return nil
}
