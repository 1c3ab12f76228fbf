package ledger

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// MigrationServer returns a copy of the named migration server.
func (l *Ledger) MigrationServer(name string) (*ferryv1.MigrationServer, bool) {
	return get(l, l.servers, name)
}

// MigrationServers lists migration servers, of one type unless unspecified.
func (l *Ledger) MigrationServers(typ ferryv1.Platform) []*ferryv1.MigrationServer {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return filtered(l.servers, func(s *ferryv1.MigrationServer) bool {
		return typ == ferryv1.Platform_PLATFORM_UNSPECIFIED || s.GetType() == typ
	})
}

// VisitMigrationServers calls visit with each migration server, in no
// order, until visit returns false. It does not copy: visit must neither
// keep nor change the server, and must not call back into the ledger.
func (l *Ledger) VisitMigrationServers(visit func(*ferryv1.MigrationServer) bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	for _, s := range l.servers {
		if !visit(s) {
			return
		}
	}
}

// MigrationServerOfHost returns the migration server on a host, if any.
func (l *Ledger) MigrationServerOfHost(host string) (*ferryv1.MigrationServer, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	for _, s := range l.servers {
		if s.GetHost() == host {
			return clone(s), true
		}
	}
	return nil, false
}

// PutMigrationServer gives a host the migration role. One host has one
// role type only.
func (l *Ledger) PutMigrationServer(s *ferryv1.MigrationServer, requestID string, now time.Time) ([]string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if names, ok := l.seenRequest(requestID); ok {
		return names, nil
	}
	for _, o := range l.servers {
		if o.GetHost() == s.GetHost() && o.GetName() != s.GetName() {
			return nil, fmt.Errorf("%w: host %s is already migration server %s of type %s; delete it first",
				ErrFailedPrecondition, s.GetHost(), o.GetName(), o.GetType())
		}
	}
	names, err := create(l, l.servers, s, requestID, now, func() { s.CreateTime = timestamppb.New(now) })
	if h, ok := l.hosts[s.GetHost()]; ok && err == nil {
		l.sampleUsage(h, now) // the history starts with the server
	}
	return names, err
}

// DeleteMigrationServer deletes a server and cancels its unfinished jobs,
// returning their names.
func (l *Ledger) DeleteMigrationServer(name string, now time.Time) ([]string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.servers[name]; !ok {
		return nil, fmt.Errorf("migration server %s: %w", name, ErrNotFound)
	}
	var cancelled []string
	for _, j := range filtered(l.jobs, func(j *ferryv1.MigrationJob) bool {
		return j.GetMigrationServer() == name && !Terminal(j.GetState())
	}) {
		l.finish(j, ferryv1.MigrationJobState_MIGRATION_JOB_STATE_CANCELLED, "migration server "+name+" was deleted", now)
		cancelled = append(cancelled, j.GetName())
	}
	delete(l.servers, name)
	delete(l.usage, name)
	return cancelled, nil
}

// SetMigrationServerEnabled enables or disables a server.
func (l *Ledger) SetMigrationServerEnabled(name string, enabled bool) error {
	return l.updateServer(name, func(s *ferryv1.MigrationServer) { s.Enabled = enabled })
}

// SetMigrationServerBandwidth changes the limits present in c and tells
// the server observer.
func (l *Ledger) SetMigrationServerBandwidth(c *ledgerv1.SetMigrationServerBandwidth) error {
	return l.updateServer(c.GetName(), func(s *ferryv1.MigrationServer) {
		if c.UpstreamBandwidth != nil {
			s.UpstreamBandwidth = c.GetUpstreamBandwidth()
			s.UpstreamBitsPerSecond = c.GetUpstreamBitsPerSecond()
		}
		if c.DownstreamBandwidth != nil {
			s.DownstreamBandwidth = c.GetDownstreamBandwidth()
			s.DownstreamBitsPerSecond = c.GetDownstreamBitsPerSecond()
		}
		if l.serverObserver != nil {
			l.serverObserver(clone(s))
		}
	})
}

func (l *Ledger) updateServer(name string, change func(*ferryv1.MigrationServer)) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, ok := l.servers[name]
	if !ok {
		return fmt.Errorf("migration server %s: %w", name, ErrNotFound)
	}
	s = clone(s)
	change(s)
	l.servers[name] = s
	return nil
}
