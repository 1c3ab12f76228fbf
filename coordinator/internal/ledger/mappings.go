package ledger

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// NetworkMappingGroup returns a copy of the named group with its etag.
func (l *Ledger) NetworkMappingGroup(name string) (*ferryv1.NetworkMappingGroup, bool) {
	g, ok := get(l, l.mappings, name)
	if ok {
		g.Etag = ETag(g)
	}
	return g, ok
}

// NetworkMappingGroups lists the groups; with source set, those of that
// source and those of any source.
func (l *Ledger) NetworkMappingGroups(source string) []*ferryv1.NetworkMappingGroup {
	l.mu.RLock()
	defer l.mu.RUnlock()
	out := filtered(l.mappings, func(g *ferryv1.NetworkMappingGroup) bool {
		return source == "" || g.GetSource() == "" || g.GetSource() == source
	})
	for _, g := range out {
		g.Etag = ETag(g)
	}
	return out
}

// PutNetworkMappingGroup creates a group, or replaces an existing one when
// update is set; then, with etag set, the stored group must still have
// that etag (ErrAborted otherwise). The source and every L3 network it
// names must exist.
func (l *Ledger) PutNetworkMappingGroup(g *ferryv1.NetworkMappingGroup, requestID string, update bool, etag string, now time.Time) ([]string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.checkMappingRefs(g); err != nil {
		return nil, err
	}
	g = clone(g)
	g.Etag = ""
	if !update {
		return create(l, l.mappings, g, requestID, now, func() {
			g.CreateTime, g.UpdateTime = timestamppb.New(now), timestamppb.New(now)
		})
	}
	old, ok := l.mappings[g.GetName()]
	if !ok {
		return nil, fmt.Errorf("network mapping group %s: %w", g.GetName(), ErrNotFound)
	}
	if err := checkETag("network mapping group "+g.GetName(), old, etag); err != nil {
		return nil, err
	}
	g.CreateTime, g.UpdateTime = old.GetCreateTime(), timestamppb.New(now)
	l.mappings[g.GetName()] = g
	return []string{g.GetName()}, nil
}

func (l *Ledger) checkMappingRefs(g *ferryv1.NetworkMappingGroup) error {
	if s := g.GetSource(); s != "" {
		if _, ok := l.sources[s]; !ok {
			return fmt.Errorf("source %s: %w", s, ErrNotFound)
		}
	}
	for _, m := range g.GetMappings() {
		if _, ok := l.networks[m.GetL3Network()]; !ok {
			return fmt.Errorf("L3 network %s: %w", m.GetL3Network(), ErrNotFound)
		}
	}
	return nil
}

// DeleteNetworkMappingGroup deletes a group. Jobs made with it keep their
// NICs.
func (l *Ledger) DeleteNetworkMappingGroup(name string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.mappings[name]; !ok {
		return fmt.Errorf("network mapping group %s: %w", name, ErrNotFound)
	}
	delete(l.mappings, name)
	return nil
}

// mappingGroupUsing names a group that refers to ref (a source or an L3
// network), or "". The caller holds l.mu.
func (l *Ledger) mappingGroupUsing(ref string) string {
	for _, g := range filtered(l.mappings, nil) {
		if g.GetSource() == ref {
			return g.GetName()
		}
		for _, m := range g.GetMappings() {
			if m.GetL3Network() == ref {
				return g.GetName()
			}
		}
	}
	return ""
}
