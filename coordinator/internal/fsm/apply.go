package fsm

import (
	"errors"
	"fmt"
	"time"

	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
)

// apply dispatches one command: one oneof case, one ledger method.
func apply(l *ledger.Ledger, cmd *ledgerv1.Command) ([]string, error) {
	now := cmd.GetTime().AsTime()
	switch op := cmd.GetOp().(type) {
	case *ledgerv1.Command_PutCluster:
		return l.PutCluster(op.PutCluster.GetCluster(), op.PutCluster.GetRequestId(), now)
	case *ledgerv1.Command_DeleteCluster:
		return one(op.DeleteCluster.GetName(), l.DeleteCluster(op.DeleteCluster.GetName()))
	case *ledgerv1.Command_PutHost:
		l.PutHost(op.PutHost.GetHost(), now)
		return []string{op.PutHost.GetHost().GetName()}, nil
	case *ledgerv1.Command_SetHostConnected:
		c := op.SetHostConnected
		return one(c.GetName(), l.SetHostConnected(c.GetName(), c.GetConnected(), now))
	case *ledgerv1.Command_PutPrimaryStorage:
		return l.PutPrimaryStorage(op.PutPrimaryStorage.GetPrimaryStorage(), op.PutPrimaryStorage.GetRequestId(), now)
	case *ledgerv1.Command_DeletePrimaryStorage:
		return one(op.DeletePrimaryStorage.GetName(), l.DeletePrimaryStorage(op.DeletePrimaryStorage.GetName()))
	case *ledgerv1.Command_PutL3Network:
		return l.PutL3Network(op.PutL3Network.GetL3Network(), op.PutL3Network.GetRequestId(), now)
	case *ledgerv1.Command_DeleteL3Network:
		return one(op.DeleteL3Network.GetName(), l.DeleteL3Network(op.DeleteL3Network.GetName()))
	case *ledgerv1.Command_ReleaseAddress:
		return one(op.ReleaseAddress.GetNetwork(), l.ReleaseAddress(op.ReleaseAddress.GetNetwork(), op.ReleaseAddress.GetIp()))
	default:
		return applyMore(l, cmd, now)
	}
}

func applyMore(l *ledger.Ledger, cmd *ledgerv1.Command, now time.Time) ([]string, error) {
	switch op := cmd.GetOp().(type) {
	case *ledgerv1.Command_PutMigrationServer:
		return l.PutMigrationServer(op.PutMigrationServer.GetMigrationServer(), op.PutMigrationServer.GetRequestId(), now)
	case *ledgerv1.Command_DeleteMigrationServer:
		return l.DeleteMigrationServer(op.DeleteMigrationServer.GetName(), now)
	case *ledgerv1.Command_SetMigrationServerEnabled:
		c := op.SetMigrationServerEnabled
		return one(c.GetName(), l.SetMigrationServerEnabled(c.GetName(), c.GetEnabled()))
	case *ledgerv1.Command_SetMigrationServerBandwidth:
		return one(op.SetMigrationServerBandwidth.GetName(), l.SetMigrationServerBandwidth(op.SetMigrationServerBandwidth))
	case *ledgerv1.Command_PutCredential:
		return l.PutCredential(op.PutCredential.GetCredential(), op.PutCredential.GetRequestId(), now)
	case *ledgerv1.Command_DeleteCredential:
		return one(op.DeleteCredential.GetName(), l.DeleteCredential(op.DeleteCredential.GetName()))
	case *ledgerv1.Command_PutSource:
		return l.PutSource(op.PutSource.GetSource(), op.PutSource.GetRequestId(), now)
	case *ledgerv1.Command_DeleteSource:
		return one(op.DeleteSource.GetName(), l.DeleteSource(op.DeleteSource.GetName()))
	case *ledgerv1.Command_RecordSourceHostKey:
		c := op.RecordSourceHostKey
		return one(c.GetName(), l.RecordSourceHostKey(c.GetName(), c.GetHostKey()))
	case *ledgerv1.Command_RecordSourceSync:
		return one(op.RecordSourceSync.GetSource(), l.RecordSourceSync(op.RecordSourceSync, now))
	case *ledgerv1.Command_PutNetworkMappingGroup:
		c := op.PutNetworkMappingGroup
		return l.PutNetworkMappingGroup(c.GetNetworkMappingGroup(), c.GetRequestId(), c.GetUpdate(), now)
	case *ledgerv1.Command_DeleteNetworkMappingGroup:
		return one(op.DeleteNetworkMappingGroup.GetName(), l.DeleteNetworkMappingGroup(op.DeleteNetworkMappingGroup.GetName()))
	default:
		return applyJobs(l, cmd, now)
	}
}

func applyJobs(l *ledger.Ledger, cmd *ledgerv1.Command, now time.Time) ([]string, error) {
	switch op := cmd.GetOp().(type) {
	case *ledgerv1.Command_CreateMigrationJobs:
		return l.CreateMigrationJobs(op.CreateMigrationJobs, now)
	case *ledgerv1.Command_StartMigrationJob:
		return one(op.StartMigrationJob.GetName(), l.StartMigrationJob(op.StartMigrationJob, now))
	case *ledgerv1.Command_CheckpointMigrationJob:
		return one(op.CheckpointMigrationJob.GetName(), l.CheckpointMigrationJob(op.CheckpointMigrationJob, now))
	case *ledgerv1.Command_FinishMigrationJob:
		return one(op.FinishMigrationJob.GetName(), l.FinishMigrationJob(op.FinishMigrationJob, now))
	case *ledgerv1.Command_CancelMigrationJob:
		return one(op.CancelMigrationJob.GetName(), l.CancelMigrationJob(op.CancelMigrationJob, now))
	case *ledgerv1.Command_RestartMigrationJob:
		return one(op.RestartMigrationJob.GetName(), l.RestartMigrationJob(op.RestartMigrationJob, now))
	case *ledgerv1.Command_DeleteMigrationJob:
		return one(op.DeleteMigrationJob.GetName(), l.DeleteMigrationJob(op.DeleteMigrationJob.GetName(), now))
	case *ledgerv1.Command_SetJobWaitingReason:
		c := op.SetJobWaitingReason
		return one(c.GetName(), l.SetJobWaitingReason(c.GetName(), c.GetReason(), now))
	case *ledgerv1.Command_PutSettings:
		l.PutSettings(op.PutSettings.GetSettings())
		return []string{ledger.SettingsName}, nil
	case *ledgerv1.Command_PutNode:
		l.PutNode(op.PutNode.GetNode())
		return []string{op.PutNode.GetNode().GetId()}, nil
	case *ledgerv1.Command_DeleteNode:
		l.DeleteNode(op.DeleteNode.GetName())
		return []string{op.DeleteNode.GetName()}, nil
	case *ledgerv1.Command_Batch:
		return applyBatch(l, op.Batch, cmd)
	default:
		return nil, fmt.Errorf("%w: %T", ErrUnknownCommand, cmd.GetOp())
	}
}

// applyBatch applies every command of a batch in order; each stands alone,
// so one refused command does not undo the others. The errors are joined.
func applyBatch(l *ledger.Ledger, b *ledgerv1.Batch, outer *ledgerv1.Command) ([]string, error) {
	var names []string
	var errs []error
	for _, c := range b.GetCommands() {
		if c.GetTime() == nil {
			c.Time = outer.GetTime()
		}
		n, err := apply(l, c)
		names = append(names, n...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	return names, errors.Join(errs...)
}

func one(name string, err error) ([]string, error) {
	if err != nil {
		return nil, err
	}
	return []string{name}, nil
}
