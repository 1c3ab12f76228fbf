package ledger

import (
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// Settings returns a copy of the cluster-wide settings with their etag.
func (l *Ledger) Settings() *ferryv1.Settings {
	l.mu.RLock()
	defer l.mu.RUnlock()
	s := clone(l.settings)
	s.Etag = ETag(s)
	return s
}

// PutSettings replaces the settings; the API merged the field mask. With
// etag set, the stored settings must still have that etag (ErrAborted
// otherwise): checked here, as the command applies, so of two updates
// made from the same read only the first can pass.
func (l *Ledger) PutSettings(s *ferryv1.Settings, etag string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := checkETag("settings", l.settings, etag); err != nil {
		return err
	}
	s = clone(s)
	s.Name = SettingsName
	s.Etag = ""
	l.settings = s
	return nil
}

// Node returns a coordinator node.
func (l *Ledger) Node(id string) (*ledgerv1.Node, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	n, ok := l.nodes[id]
	if !ok {
		return nil, false
	}
	return clone(n), true
}

// Nodes lists coordinator nodes by ID.
func (l *Ledger) Nodes() []*ledgerv1.Node {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return sortedClones(l.nodes)
}

// PutNode records a coordinator node and its addresses.
func (l *Ledger) PutNode(n *ledgerv1.Node) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.nodes[n.GetId()] = clone(n)
}

// DeleteNode forgets a coordinator node.
func (l *Ledger) DeleteNode(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.nodes, id)
}
