package ledger

import (
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/reflect/protoreflect"

	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
)

// ErrUnknownCommand reports a command this version has no entry for: a
// log entry written by a newer leader, or a command with no op. Applying
// one would make this replica diverge from the others, so the FSM stops
// the node instead.
var ErrUnknownCommand = errors.New("unknown command")

// command is one case of the Command oneof: how it applies, and what the
// leader checks before proposing it.
type command struct {
	// apply changes the ledger; now is the leader-stamped time.
	apply func(l *Ledger, c *ledgerv1.Command, now time.Time) ([]string, error)
	// refuse, when set, says whether the ledger as it is would refuse the
	// command, without changing it; called with l.mu read-locked.
	refuse func(l *Ledger, c *ledgerv1.Command) error
}

// commands is the one table of mutations, keyed by the oneof field's
// name; TestEveryCommandHasAnEntry checks it against the descriptor.
// Adding a mutation: see "A new mutation" in docs/development.md.
var commands map[protoreflect.Name]command

func init() {
	commands = map[protoreflect.Name]command{
		"put_cluster": {
			apply: func(l *Ledger, c *ledgerv1.Command, now time.Time) ([]string, error) {
				p := c.GetPutCluster()
				return l.PutCluster(p.GetCluster(), p.GetRequestId(), now)
			},
			refuse: func(l *Ledger, c *ledgerv1.Command) error {
				p := c.GetPutCluster()
				return existsRefusal(l, l.clusters, p.GetCluster().GetName(), p.GetRequestId())
			},
		},
		"delete_cluster": {
			apply: func(l *Ledger, c *ledgerv1.Command, _ time.Time) ([]string, error) {
				n := c.GetDeleteCluster().GetName()
				return one(n, l.DeleteCluster(n))
			},
			refuse: func(l *Ledger, c *ledgerv1.Command) error {
				return l.deleteClusterRefusal(c.GetDeleteCluster().GetName())
			},
		},
		"put_host": {
			apply: func(l *Ledger, c *ledgerv1.Command, now time.Time) ([]string, error) {
				l.PutHost(c.GetPutHost().GetHost(), now)
				return []string{c.GetPutHost().GetHost().GetName()}, nil
			},
		},
		"set_host_connected": {
			apply: func(l *Ledger, c *ledgerv1.Command, now time.Time) ([]string, error) {
				p := c.GetSetHostConnected()
				return one(p.GetName(), l.SetHostConnected(p.GetName(), p.GetConnected(), now))
			},
		},
		"set_host_maintenance": {
			apply: func(l *Ledger, c *ledgerv1.Command, _ time.Time) ([]string, error) {
				p := c.GetSetHostMaintenance()
				return one(p.GetName(), l.SetHostMaintenance(p.GetName(), p.GetMaintenance()))
			},
			refuse: func(l *Ledger, c *ledgerv1.Command) error {
				return l.hostRefusal(c.GetSetHostMaintenance().GetName())
			},
		},
		"set_pending_cleanup": {
			apply: func(l *Ledger, c *ledgerv1.Command, now time.Time) ([]string, error) {
				p := c.GetSetPendingCleanup()
				return one(p.GetHost(), l.SetPendingCleanup(p.GetHost(), p.GetJob(), p.GetCleanup(), now))
			},
		},
		"put_primary_storage": {
			apply: func(l *Ledger, c *ledgerv1.Command, now time.Time) ([]string, error) {
				p := c.GetPutPrimaryStorage()
				return l.PutPrimaryStorage(p.GetPrimaryStorage(), p.GetRequestId(), now)
			},
			refuse: func(l *Ledger, c *ledgerv1.Command) error {
				p := c.GetPutPrimaryStorage()
				return existsRefusal(l, l.storages, p.GetPrimaryStorage().GetName(), p.GetRequestId())
			},
		},
		"delete_primary_storage": {
			apply: func(l *Ledger, c *ledgerv1.Command, _ time.Time) ([]string, error) {
				n := c.GetDeletePrimaryStorage().GetName()
				return one(n, l.DeletePrimaryStorage(n))
			},
			refuse: func(l *Ledger, c *ledgerv1.Command) error {
				return l.deleteStorageRefusal(c.GetDeletePrimaryStorage().GetName())
			},
		},
		"put_l3_network": {
			apply: func(l *Ledger, c *ledgerv1.Command, now time.Time) ([]string, error) {
				p := c.GetPutL3Network()
				return l.PutL3Network(p.GetL3Network(), p.GetRequestId(), now)
			},
			refuse: func(l *Ledger, c *ledgerv1.Command) error {
				p := c.GetPutL3Network()
				return existsRefusal(l, l.networks, p.GetL3Network().GetName(), p.GetRequestId())
			},
		},
		"release_address": {
			apply: func(l *Ledger, c *ledgerv1.Command, _ time.Time) ([]string, error) {
				p := c.GetReleaseAddress()
				return one(p.GetNetwork(), l.ReleaseAddress(p.GetNetwork(), p.GetIp()))
			},
			refuse: func(l *Ledger, c *ledgerv1.Command) error {
				p := c.GetReleaseAddress()
				return l.releaseAddressRefusal(p.GetNetwork(), p.GetIp())
			},
		},
		"delete_l3_network": {
			apply: func(l *Ledger, c *ledgerv1.Command, _ time.Time) ([]string, error) {
				n := c.GetDeleteL3Network().GetName()
				return one(n, l.DeleteL3Network(n))
			},
			refuse: func(l *Ledger, c *ledgerv1.Command) error {
				return l.deleteNetworkRefusal(c.GetDeleteL3Network().GetName())
			},
		},
	}
	for name, cmd := range serverAndSourceCommands() {
		commands[name] = cmd
	}
	for name, cmd := range jobAndClusterCommands() {
		commands[name] = cmd
	}
}

func serverAndSourceCommands() map[protoreflect.Name]command {
	return map[protoreflect.Name]command{
		"put_migration_server": {
			apply: func(l *Ledger, c *ledgerv1.Command, now time.Time) ([]string, error) {
				p := c.GetPutMigrationServer()
				return l.PutMigrationServer(p.GetMigrationServer(), p.GetRequestId(), now)
			},
			refuse: func(l *Ledger, c *ledgerv1.Command) error {
				p := c.GetPutMigrationServer()
				return existsRefusal(l, l.servers, p.GetMigrationServer().GetName(), p.GetRequestId())
			},
		},
		"delete_migration_server": {
			apply: func(l *Ledger, c *ledgerv1.Command, now time.Time) ([]string, error) {
				return l.DeleteMigrationServer(c.GetDeleteMigrationServer().GetName(), now)
			},
			refuse: func(l *Ledger, c *ledgerv1.Command) error {
				return l.serverRefusal(c.GetDeleteMigrationServer().GetName())
			},
		},
		"set_migration_server_enabled": {
			apply: func(l *Ledger, c *ledgerv1.Command, _ time.Time) ([]string, error) {
				p := c.GetSetMigrationServerEnabled()
				return one(p.GetName(), l.SetMigrationServerEnabled(p.GetName(), p.GetEnabled()))
			},
			refuse: func(l *Ledger, c *ledgerv1.Command) error {
				return l.serverRefusal(c.GetSetMigrationServerEnabled().GetName())
			},
		},
		"set_migration_server_bandwidth": {
			apply: func(l *Ledger, c *ledgerv1.Command, _ time.Time) ([]string, error) {
				p := c.GetSetMigrationServerBandwidth()
				return one(p.GetName(), l.SetMigrationServerBandwidth(p))
			},
			refuse: func(l *Ledger, c *ledgerv1.Command) error {
				return l.serverRefusal(c.GetSetMigrationServerBandwidth().GetName())
			},
		},
		"put_credential": {
			apply: func(l *Ledger, c *ledgerv1.Command, now time.Time) ([]string, error) {
				p := c.GetPutCredential()
				return l.PutCredential(p.GetCredential(), p.GetRequestId(), now)
			},
			refuse: func(l *Ledger, c *ledgerv1.Command) error {
				p := c.GetPutCredential()
				return existsRefusal(l, l.credentials, p.GetCredential().GetCredential().GetName(), p.GetRequestId())
			},
		},
		"delete_credential": {
			apply: func(l *Ledger, c *ledgerv1.Command, _ time.Time) ([]string, error) {
				n := c.GetDeleteCredential().GetName()
				return one(n, l.DeleteCredential(n))
			},
			refuse: func(l *Ledger, c *ledgerv1.Command) error {
				return l.deleteCredentialRefusal(c.GetDeleteCredential().GetName())
			},
		},
		"put_source": {
			apply: func(l *Ledger, c *ledgerv1.Command, now time.Time) ([]string, error) {
				p := c.GetPutSource()
				return l.PutSource(p.GetSource(), p.GetRequestId(), now)
			},
			refuse: func(l *Ledger, c *ledgerv1.Command) error {
				p := c.GetPutSource()
				return existsRefusal(l, l.sources, p.GetSource().GetName(), p.GetRequestId())
			},
		},
		"delete_source": {
			apply: func(l *Ledger, c *ledgerv1.Command, _ time.Time) ([]string, error) {
				n := c.GetDeleteSource().GetName()
				return one(n, l.DeleteSource(n))
			},
			refuse: func(l *Ledger, c *ledgerv1.Command) error {
				return l.deleteSourceRefusal(c.GetDeleteSource().GetName())
			},
		},
		"record_source_host_key": {
			apply: func(l *Ledger, c *ledgerv1.Command, _ time.Time) ([]string, error) {
				p := c.GetRecordSourceHostKey()
				return one(p.GetName(), l.RecordSourceHostKey(p.GetName(), p.GetHostKey()))
			},
		},
		"record_source_sync": {
			apply: func(l *Ledger, c *ledgerv1.Command, now time.Time) ([]string, error) {
				p := c.GetRecordSourceSync()
				return one(p.GetSource(), l.RecordSourceSync(p, now))
			},
		},
		"put_network_mapping_group": {
			apply: func(l *Ledger, c *ledgerv1.Command, now time.Time) ([]string, error) {
				p := c.GetPutNetworkMappingGroup()
				return l.PutNetworkMappingGroup(p.GetNetworkMappingGroup(), p.GetRequestId(), p.GetUpdate(), p.GetEtag(), now)
			},
			refuse: func(l *Ledger, c *ledgerv1.Command) error {
				p := c.GetPutNetworkMappingGroup()
				if old, ok := l.mappings[p.GetNetworkMappingGroup().GetName()]; ok && p.GetUpdate() {
					return checkETag("network mapping group "+old.GetName(), old, p.GetEtag())
				}
				return nil
			},
		},
		"update_resource": {
			apply: func(l *Ledger, c *ledgerv1.Command, now time.Time) ([]string, error) {
				return l.UpdateResource(c.GetUpdateResource(), now)
			},
			refuse: func(l *Ledger, c *ledgerv1.Command) error {
				return l.updateRefusal(c.GetUpdateResource())
			},
		},
		"delete_network_mapping_group": {
			apply: func(l *Ledger, c *ledgerv1.Command, _ time.Time) ([]string, error) {
				n := c.GetDeleteNetworkMappingGroup().GetName()
				return one(n, l.DeleteNetworkMappingGroup(n))
			},
		},
	}
}

func jobAndClusterCommands() map[protoreflect.Name]command {
	return map[protoreflect.Name]command{
		"create_migration_jobs": {
			apply: func(l *Ledger, c *ledgerv1.Command, now time.Time) ([]string, error) {
				return l.CreateMigrationJobs(c.GetCreateMigrationJobs(), now)
			},
		},
		"start_migration_job": {
			apply: func(l *Ledger, c *ledgerv1.Command, now time.Time) ([]string, error) {
				p := c.GetStartMigrationJob()
				return one(p.GetName(), l.StartMigrationJob(p, now))
			},
		},
		"checkpoint_migration_job": {
			apply: func(l *Ledger, c *ledgerv1.Command, now time.Time) ([]string, error) {
				p := c.GetCheckpointMigrationJob()
				return one(p.GetName(), l.CheckpointMigrationJob(p, now))
			},
		},
		"finish_migration_job": {
			apply: func(l *Ledger, c *ledgerv1.Command, now time.Time) ([]string, error) {
				p := c.GetFinishMigrationJob()
				return one(p.GetName(), l.FinishMigrationJob(p, now))
			},
		},
		"cancel_migration_job": {
			apply: func(l *Ledger, c *ledgerv1.Command, now time.Time) ([]string, error) {
				p := c.GetCancelMigrationJob()
				return one(p.GetName(), l.CancelMigrationJob(p, now))
			},
			refuse: func(l *Ledger, c *ledgerv1.Command) error {
				return l.cancelJobRefusal(c.GetCancelMigrationJob().GetName())
			},
		},
		"set_migration_job_cutover": {
			apply: func(l *Ledger, c *ledgerv1.Command, now time.Time) ([]string, error) {
				p := c.GetSetMigrationJobCutover()
				return one(p.GetName(), l.SetMigrationJobCutover(p, now))
			},
			refuse: func(l *Ledger, c *ledgerv1.Command) error {
				return l.cutoverRefusal(c.GetSetMigrationJobCutover().GetName())
			},
		},
		"restart_migration_job": {
			apply: func(l *Ledger, c *ledgerv1.Command, now time.Time) ([]string, error) {
				p := c.GetRestartMigrationJob()
				return one(p.GetName(), l.RestartMigrationJob(p, now))
			},
			refuse: func(l *Ledger, c *ledgerv1.Command) error {
				name := c.GetRestartMigrationJob().GetName()
				j, ok := l.jobs[name]
				if !ok {
					return fmt.Errorf("job %s: %w", name, ErrNotFound)
				}
				return l.restartJobRefusal(j)
			},
		},
		"delete_migration_job": {
			apply: func(l *Ledger, c *ledgerv1.Command, now time.Time) ([]string, error) {
				n := c.GetDeleteMigrationJob().GetName()
				return one(n, l.DeleteMigrationJob(n, now))
			},
			refuse: func(l *Ledger, c *ledgerv1.Command) error {
				return l.deleteJobRefusal(c.GetDeleteMigrationJob().GetName())
			},
		},
		"set_job_waiting_reason": {
			apply: func(l *Ledger, c *ledgerv1.Command, now time.Time) ([]string, error) {
				p := c.GetSetJobWaitingReason()
				return one(p.GetName(), l.SetJobWaitingReason(p.GetName(), p.GetReason(), now))
			},
		},
		"put_settings": {
			apply: func(l *Ledger, c *ledgerv1.Command, _ time.Time) ([]string, error) {
				p := c.GetPutSettings()
				return one(SettingsName, l.PutSettings(p.GetSettings(), p.GetEtag()))
			},
			refuse: func(l *Ledger, c *ledgerv1.Command) error {
				return checkETag("settings", l.settings, c.GetPutSettings().GetEtag())
			},
		},
		"put_node": {
			apply: func(l *Ledger, c *ledgerv1.Command, _ time.Time) ([]string, error) {
				l.PutNode(c.GetPutNode().GetNode())
				return []string{c.GetPutNode().GetNode().GetId()}, nil
			},
		},
		"delete_node": {
			apply: func(l *Ledger, c *ledgerv1.Command, _ time.Time) ([]string, error) {
				n := c.GetDeleteNode().GetName()
				l.DeleteNode(n)
				return []string{n}, nil
			},
		},
		"revoke_certificate": {
			apply: func(l *Ledger, c *ledgerv1.Command, now time.Time) ([]string, error) {
				return l.RevokeCertificate(c.GetRevokeCertificate().GetCertificate(), now), nil
			},
		},
		"record_audit_event": {
			apply: func(l *Ledger, c *ledgerv1.Command, now time.Time) ([]string, error) {
				p := c.GetRecordAuditEvent()
				return l.RecordAuditEvent(p.GetEvent(), p.GetRetention(), now), nil
			},
		},
		"set_bundle_signing_key": {
			apply: func(l *Ledger, c *ledgerv1.Command, _ time.Time) ([]string, error) {
				return l.SetBundleSigningKey(c.GetSetBundleSigningKey()), nil
			},
		},
		"batch": {
			apply: func(l *Ledger, c *ledgerv1.Command, _ time.Time) ([]string, error) {
				return l.applyBatch(c.GetBatch(), c)
			},
		},
	}
}

// opField is the oneof field set in cmd, or nil when none is.
func opField(cmd *ledgerv1.Command) protoreflect.FieldDescriptor {
	m := cmd.ProtoReflect()
	return m.WhichOneof(m.Descriptor().Oneofs().ByName("op"))
}

// lookup returns the table entry of cmd's op.
func lookup(cmd *ledgerv1.Command) (command, error) {
	fd := opField(cmd)
	if fd == nil {
		return command{}, fmt.Errorf("%w: a command with no op", ErrUnknownCommand)
	}
	c, ok := commands[fd.Name()]
	if !ok {
		return command{}, fmt.Errorf("%w: %s", ErrUnknownCommand, fd.Name())
	}
	return c, nil
}

// Apply applies one command, the only way the ledger changes: one oneof
// case, one entry of the table, one ledger method. It returns the names
// the command created or touched, or why it was refused; a command with
// no entry is ErrUnknownCommand and changes nothing.
//
// A command stamped with a request (a custom method's request_id) whose
// request_id was recorded for the same method and target answers the
// recorded names and applies nothing; for another method or target it is
// ErrRequestReused. Otherwise, once it applied, the request is recorded.
func (l *Ledger) Apply(cmd *ledgerv1.Command) ([]string, error) {
	c, err := lookup(cmd)
	if err != nil {
		return nil, err
	}
	now := cmd.GetTime().AsTime()
	r := cmd.GetRequest()
	if r.GetRequestId() != "" {
		if names, done, err := l.replay(r, now); done || err != nil {
			return names, err
		}
	}
	names, err := c.apply(l, cmd, now)
	if err == nil && r.GetRequestId() != "" {
		l.recordCall(r, now)
	}
	return names, err
}

// applyBatch applies every command of a batch in order; each stands alone,
// so one refused command does not undo the others. The errors are joined.
func (l *Ledger) applyBatch(b *ledgerv1.Batch, outer *ledgerv1.Command) ([]string, error) {
	var names []string
	var errs []error
	for _, c := range b.GetCommands() {
		if c.GetTime() == nil {
			c.Time = outer.GetTime()
		}
		n, err := l.Apply(c)
		names = append(names, n...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	return names, errors.Join(errs...)
}

// Refusal says whether the ledger, as it is now, would refuse cmd, and
// why, without changing anything. The leader asks before proposing, so a
// request that names a missing resource, a name in use or a resource in a
// state that forbids the change never takes a Raft log entry for its
// command (the call's audit event, RecordAuditEvent, takes one). Apply still
// decides: what was true when Refusal answered may change before the
// command commits. A command without a refusal check passes; one with no
// entry at all is ErrUnknownCommand.
func (l *Ledger) Refusal(cmd *ledgerv1.Command) error {
	c, err := lookup(cmd)
	if err != nil {
		return err
	}
	l.mu.RLock()
	defer l.mu.RUnlock()
	if r := cmd.GetRequest(); r.GetRequestId() != "" {
		// A repeat is answered, not refused: the first one changed the
		// state the refusal would look at.
		if _, done, err := l.replayLocked(r, cmd.GetTime().AsTime()); done || err != nil {
			return err
		}
	}
	if c.refuse == nil {
		return nil
	}
	return c.refuse(l, cmd)
}

func one(name string, err error) ([]string, error) {
	if err != nil {
		return nil, err
	}
	return []string{name}, nil
}
