package ledger

import (
	"fmt"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// existsRefusal refuses a create whose name is taken, unless its request
// ID was seen (a replay answers with what it made).
func existsRefusal[T any](l *Ledger, m map[string]T, name, requestID string) error {
	if _, seen := l.seenRequest(requestID); seen {
		return nil
	}
	if _, ok := m[name]; ok {
		return fmt.Errorf("%s: %w", name, ErrExists)
	}
	return nil
}

func (l *Ledger) deleteClusterRefusal(name string) error {
	if _, ok := l.clusters[name]; !ok {
		return fmt.Errorf("cluster %s: %w", name, ErrNotFound)
	}
	for _, ps := range sortedClones(l.storages) {
		if ps.GetCluster() == name {
			return fmt.Errorf("%w: cluster %s still has primary storage %s; delete it first", ErrFailedPrecondition, name, ps.GetName())
		}
	}
	for _, n := range sortedClones(l.networks) {
		if n.GetCluster() == name {
			return fmt.Errorf("%w: cluster %s still has L3 network %s; delete it first", ErrFailedPrecondition, name, n.GetName())
		}
	}
	return nil
}

func (l *Ledger) deleteStorageRefusal(name string) error {
	if _, ok := l.storages[name]; !ok {
		return fmt.Errorf("primary storage %s: %w", name, ErrNotFound)
	}
	if j := l.activeJob(func(j *ferryv1.MigrationJob) bool { return j.GetTarget().GetPrimaryStorage() == name }); j != "" {
		return fmt.Errorf("%w: job %s still targets primary storage %s; cancel it first", ErrFailedPrecondition, j, name)
	}
	return nil
}

func (l *Ledger) deleteNetworkRefusal(name string) error {
	if _, ok := l.networks[name]; !ok {
		return fmt.Errorf("L3 network %s: %w", name, ErrNotFound)
	}
	if j := l.activeJob(func(j *ferryv1.MigrationJob) bool { return usesNetwork(j, name) }); j != "" {
		return fmt.Errorf("%w: job %s still uses L3 network %s; cancel it first", ErrFailedPrecondition, j, name)
	}
	return nil
}

func (l *Ledger) serverRefusal(name string) error {
	if _, ok := l.servers[name]; !ok {
		return fmt.Errorf("migration server %s: %w", name, ErrNotFound)
	}
	return nil
}

func (l *Ledger) deleteCredentialRefusal(name string) error {
	if _, ok := l.credentials[name]; !ok {
		return fmt.Errorf("credential %s: %w", name, ErrNotFound)
	}
	for _, s := range sortedClones(l.sources) {
		for _, c := range sourceCredentials(s) {
			if c == name {
				return fmt.Errorf("%w: source %s still uses credential %s; delete it first", ErrFailedPrecondition, s.GetName(), name)
			}
		}
	}
	return nil
}

func (l *Ledger) deleteSourceRefusal(name string) error {
	if _, ok := l.sources[name]; !ok {
		return fmt.Errorf("source %s: %w", name, ErrNotFound)
	}
	if j := l.activeJob(func(j *ferryv1.MigrationJob) bool { return j.GetSource() == name }); j != "" {
		return fmt.Errorf("%w: job %s still reads from source %s; cancel it first", ErrFailedPrecondition, j, name)
	}
	return nil
}

func (l *Ledger) cancelJobRefusal(name string) error {
	j, ok := l.jobs[name]
	if !ok {
		return fmt.Errorf("job %s: %w", name, ErrNotFound)
	}
	if Terminal(j.GetState()) {
		return fmt.Errorf("%w: job %s is already %s", ErrFailedPrecondition, name, j.GetState())
	}
	return nil
}

func (l *Ledger) restartJobRefusal(j *ferryv1.MigrationJob) error {
	if j.GetState() != stateFailed && j.GetState() != stateCancelled {
		return fmt.Errorf("%w: job %s is %s; only FAILED or CANCELLED jobs can be restarted", ErrFailedPrecondition, j.GetName(), j.GetState())
	}
	for _, nic := range j.GetTarget().GetNics() {
		if owner, ok := l.holder(nic.GetL3Network(), nic.GetIp(), j.GetName()); ok && nic.GetIp() != "" {
			return fmt.Errorf("%w: address %s of job %s is now held by job %s", ErrFailedPrecondition, nic.GetIp(), j.GetName(), owner)
		}
	}
	return nil
}

func (l *Ledger) deleteJobRefusal(name string) error {
	j, ok := l.jobs[name]
	if !ok {
		return fmt.Errorf("job %s: %w", name, ErrNotFound)
	}
	if !Terminal(j.GetState()) {
		return fmt.Errorf("%w: job %s is %s; cancel it first", ErrFailedPrecondition, name, j.GetState())
	}
	return nil
}
