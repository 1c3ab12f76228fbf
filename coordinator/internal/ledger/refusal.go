package ledger

import (
	"fmt"

	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// Refusal says whether the ledger, as it is now, would refuse cmd, and
// why, without changing anything. The leader asks before proposing, so a
// request that names a missing resource, a name in use or a resource in a
// state that forbids the change never takes a Raft log entry. Apply still
// decides: what was true when Refusal answered may change before the
// command commits. Commands it does not know it lets pass.
func (l *Ledger) Refusal(cmd *ledgerv1.Command) error {
	l.mu.RLock()
	defer l.mu.RUnlock()
	switch op := cmd.GetOp().(type) {
	case *ledgerv1.Command_PutCluster:
		return existsRefusal(l, l.clusters, op.PutCluster.GetCluster().GetName(), op.PutCluster.GetRequestId())
	case *ledgerv1.Command_DeleteCluster:
		return l.deleteClusterRefusal(op.DeleteCluster.GetName())
	case *ledgerv1.Command_PutPrimaryStorage:
		return existsRefusal(l, l.storages, op.PutPrimaryStorage.GetPrimaryStorage().GetName(), op.PutPrimaryStorage.GetRequestId())
	case *ledgerv1.Command_DeletePrimaryStorage:
		return l.deleteStorageRefusal(op.DeletePrimaryStorage.GetName())
	case *ledgerv1.Command_PutL3Network:
		return existsRefusal(l, l.networks, op.PutL3Network.GetL3Network().GetName(), op.PutL3Network.GetRequestId())
	case *ledgerv1.Command_DeleteL3Network:
		return l.deleteNetworkRefusal(op.DeleteL3Network.GetName())
	case *ledgerv1.Command_ReleaseAddress:
		return l.releaseAddressRefusal(op.ReleaseAddress.GetNetwork(), op.ReleaseAddress.GetIp())
	case *ledgerv1.Command_PutMigrationServer:
		return existsRefusal(l, l.servers, op.PutMigrationServer.GetMigrationServer().GetName(), op.PutMigrationServer.GetRequestId())
	case *ledgerv1.Command_DeleteMigrationServer:
		return l.serverRefusal(op.DeleteMigrationServer.GetName())
	case *ledgerv1.Command_SetMigrationServerEnabled:
		return l.serverRefusal(op.SetMigrationServerEnabled.GetName())
	case *ledgerv1.Command_SetMigrationServerBandwidth:
		return l.serverRefusal(op.SetMigrationServerBandwidth.GetName())
	case *ledgerv1.Command_PutCredential:
		return existsRefusal(l, l.credentials, op.PutCredential.GetCredential().GetCredential().GetName(), op.PutCredential.GetRequestId())
	case *ledgerv1.Command_DeleteCredential:
		return l.deleteCredentialRefusal(op.DeleteCredential.GetName())
	case *ledgerv1.Command_PutSource:
		return existsRefusal(l, l.sources, op.PutSource.GetSource().GetName(), op.PutSource.GetRequestId())
	case *ledgerv1.Command_DeleteSource:
		return l.deleteSourceRefusal(op.DeleteSource.GetName())
	case *ledgerv1.Command_CancelMigrationJob:
		return l.cancelJobRefusal(op.CancelMigrationJob.GetName())
	case *ledgerv1.Command_RestartMigrationJob:
		j, ok := l.jobs[op.RestartMigrationJob.GetName()]
		if !ok {
			return fmt.Errorf("job %s: %w", op.RestartMigrationJob.GetName(), ErrNotFound)
		}
		return l.restartJobRefusal(j)
	case *ledgerv1.Command_DeleteMigrationJob:
		return l.deleteJobRefusal(op.DeleteMigrationJob.GetName())
	}
	return nil
}

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
		if owner, ok := l.usedAddresses(nic.GetL3Network(), j.GetName())[nic.GetIp()]; ok && nic.GetIp() != "" {
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
