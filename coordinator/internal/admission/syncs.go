package admission

import (
	"context"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// batchSyncs are the source syncs one create (or preview) needed to
// check its VMs: read from an agent and kept here, not recorded, so that
// a refused create writes nothing. Create records them, before its jobs,
// once every check has passed; preview records them as it answers.
type batchSyncs struct {
	a     *Admission
	fresh map[string]*ledgerv1.RecordSourceSync
	at    map[string]time.Time
}

func (a *Admission) newBatchSyncs() *batchSyncs {
	return &batchSyncs{a: a, fresh: map[string]*ledgerv1.RecordSourceSync{}, at: map[string]time.Time{}}
}

// sync reads the inventory of source name through serverName (any
// suitable server when "") and keeps it; errors are Deps.ReadSource's.
func (b *batchSyncs) sync(ctx context.Context, name, serverName string) error {
	rec, err := b.a.readSource(ctx, name, serverName)
	if rec != nil {
		b.fresh[name], b.at[name] = rec, b.a.clock()
	}
	return err
}

// inventory is the freshest inventory of the source: the one kept here,
// else the ledger's.
func (b *batchSyncs) inventory(name string) (*ferryv1.SourceInventory, bool) {
	if rec := b.fresh[name]; rec.GetInventory() != nil {
		inv := proto.Clone(rec.GetInventory()).(*ferryv1.SourceInventory)
		inv.Source, inv.SyncTime = name, timestamppb.New(b.at[name])
		return inv, true
	}
	return b.a.ledger.SourceInventory(name)
}

// lastError is lastError of src, with a failed sync kept here first.
func (b *batchSyncs) lastError(src *ferryv1.Source) string {
	if e := b.fresh[src.GetName()].GetError(); e != "" {
		return " (last attempt: " + e + ")"
	}
	return LastSyncError(src)
}

// record writes the kept syncs to the ledger.
func (b *batchSyncs) record(ctx context.Context) error {
	for name, rec := range b.fresh {
		if err := b.a.record(ctx, &ledgerv1.Command{Op: &ledgerv1.Command_RecordSourceSync{RecordSourceSync: rec}}); err != nil {
			return err
		}
		delete(b.fresh, name)
	}
	return nil
}

// LastSyncError describes the last failed sync of src, "" when none
// failed.
func LastSyncError(src *ferryv1.Source) string {
	if e := src.GetLastSyncError(); e != "" {
		return " (last attempt: " + e + ")"
	}
	return ""
}
