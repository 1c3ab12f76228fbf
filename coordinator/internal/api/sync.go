package api

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// Timing of the inventory syncs the leader runs on its own.
const (
	syncTick    = time.Second
	syncTimeout = 5 * time.Minute
)

// syncer tracks the background syncs of the leader: which source is being
// synced, and when each was last tried.
type syncer struct {
	kick chan struct{}
	wg   sync.WaitGroup

	mu      sync.Mutex
	running map[string]bool
	lastTry map[string]time.Time
}

func newSyncer() *syncer {
	return &syncer{kick: make(chan struct{}, 1), running: map[string]bool{}, lastTry: map[string]time.Time{}}
}

// kickSync makes the loop look at the sources now, e.g. after CreateSource.
func (a *API) kickSync() {
	select {
	case a.sync.kick <- struct{}{}:
	default:
	}
}

// SyncSource has an agent read the source's inventory and records it.
func (s *sourceService) SyncSource(ctx context.Context, req *ferryv1.SyncSourceRequest) (*ferryv1.SyncSourceResponse, error) {
	src, err := s.syncSource(ctx, req)
	return reply(ctx, s.a, &ferryv1.SyncSourceResponse{Source: src}, err)
}

func (s *sourceService) syncSource(ctx context.Context, req *ferryv1.SyncSourceRequest) (*ferryv1.Source, error) {
	c := &checker{}
	checkRef(c, "name", req.GetName(), colSources)
	checkOptionalRef(c, "migration_server", req.GetMigrationServer(), colServers)
	checkRequestID(c, req.GetRequestId())
	if err := c.err(); err != nil {
		return nil, err
	}
	const method = "SyncSource"
	again, err := s.a.replayed(req.GetRequestId(), method, req.GetName())
	if err != nil {
		return nil, err
	}
	if !again {
		stamp := &ledgerv1.RequestStamp{RequestId: req.GetRequestId(), Method: method, Target: req.GetName()}
		if err := s.a.syncSourceOnce(ctx, req.GetName(), req.GetMigrationServer(), stamp); err != nil {
			return nil, err
		}
	}
	return lookup(s.a.ledger.Source, req.GetName(), "source")
}

// syncSource has the agent of a migration server of the source's type
// (the named one, or any enabled and connected one) read the source's
// inventory, and records the outcome in the ledger: the inventory, or the
// agent's reason when reading failed (FAILED_PRECONDITION, returned as
// well). An agent that is not reachable records nothing.
func (a *API) syncSource(ctx context.Context, name, serverName string) error {
	return a.syncSourceOnce(ctx, name, serverName, nil)
}

// syncSourceOnce is syncSource recording, with a successful sync only,
// the request that asked for it (SyncSource's request_id): a failed sync
// is not remembered, so its repeat syncs again.
func (a *API) syncSourceOnce(ctx context.Context, name, serverName string, stamp *ledgerv1.RequestStamp) error {
	rec, syncErr := a.readSourceSync(ctx, name, serverName)
	if rec == nil {
		return syncErr
	}
	cmd := &ledgerv1.Command{Op: &ledgerv1.Command_RecordSourceSync{RecordSourceSync: rec}}
	if syncErr == nil && stamp.GetRequestId() != "" {
		cmd.Request = stamp
	}
	if _, err := a.propose(ctx, cmd); err != nil {
		return err
	}
	return syncErr
}

// readSourceSync is syncSource without the recording: the record to
// write, nil when there is nothing to record, and the sync's error.
func (a *API) readSourceSync(ctx context.Context, name, serverName string) (*ledgerv1.RecordSourceSync, error) {
	if a.agents == nil {
		return nil, status.Error(codes.Unimplemented, "this coordinator has no agent sessions to sync sources through")
	}
	src, ok := a.ledger.Source(name)
	if !ok {
		return nil, notFound("name", name)
	}
	server, err := a.pickInventoryServer(src, serverName)
	if err != nil {
		return nil, err
	}
	inv, syncErr := a.agents.SourceInventory(ctx, src, server)
	if syncErr != nil {
		if status.Code(syncErr) != codes.FailedPrecondition {
			return nil, syncErr
		}
		return &ledgerv1.RecordSourceSync{Source: name, Error: status.Convert(syncErr).Message()}, syncErr
	}
	return &ledgerv1.RecordSourceSync{Source: name, Inventory: inv}, nil
}

// pickInventoryServer returns the named server after checking it can
// reach the source, or the first enabled server of the source's type whose
// agent is connected.
func (a *API) pickInventoryServer(src *ferryv1.Source, name string) (*ferryv1.MigrationServer, error) {
	if name != "" {
		ms, ok := a.ledger.MigrationServer(name)
		switch {
		case !ok:
			return nil, notFound("migration_server", name)
		case ms.GetType() != src.GetType() && src.GetType() != ferryv1.Platform_PLATFORM_BUNDLE:
			return nil, precondition("migration_server", "%s is a %s server and cannot reach %s source %s",
				name, platformName(ms.GetType()), platformName(src.GetType()), src.GetName())
		case !a.agents.Connected(ms.GetHost()):
			return nil, precondition("migration_server", "the agent of %s on %s is not connected; start ferry-agent there first", name, ms.GetHost())
		}
		return ms, nil
	}
	typ := src.GetType()
	if typ == ferryv1.Platform_PLATFORM_BUNDLE {
		typ = ferryv1.Platform_PLATFORM_UNSPECIFIED // any server may read a directory
	}
	for _, ms := range a.ledger.MigrationServers(typ) {
		if ms.GetEnabled() && a.agents.Connected(ms.GetHost()) {
			return ms, nil
		}
	}
	return nil, precondition("source", "no enabled %s migration server has a connected agent to reach %s; create or enable one first",
		platformName(src.GetType()), src.GetName())
}

// LeadInventorySync syncs, for one leadership term (see package leader),
// every source whose last sync is older than the inventory_sync_interval
// setting (or that was never synced, such as a source just created)
// through any enabled, connected migration server of its type. It
// returns when ctx ends, after the syncs it started.
func (a *API) LeadInventorySync(ctx context.Context) {
	if a.agents == nil {
		return
	}
	tick := time.NewTicker(syncTick)
	defer tick.Stop()
	defer a.sync.wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-a.sync.kick:
		}
		a.syncDue(ctx)
	}
}

// syncDue starts a sync of each source that is due and reachable.
func (a *API) syncDue(ctx context.Context) {
	interval := ledger.DefaultInventorySyncInterval
	if d := a.ledger.Settings().GetInventorySyncInterval(); d != nil && d.AsDuration() > 0 {
		interval = d.AsDuration()
	}
	now := a.clock()
	for _, src := range a.ledger.Sources(ferryv1.Platform_PLATFORM_UNSPECIFIED) {
		name := src.GetName()
		a.sync.mu.Lock()
		last := a.sync.lastTry[name]
		if t := src.GetLastSyncAttemptTime(); t != nil && t.AsTime().After(last) {
			last = t.AsTime()
		}
		due := !a.sync.running[name] && now.Sub(last) >= interval
		a.sync.mu.Unlock()
		if !due {
			continue
		}
		if _, err := a.pickInventoryServer(src, ""); err != nil {
			continue // no agent to reach it yet; try again next tick
		}
		a.sync.mu.Lock()
		a.sync.running[name], a.sync.lastTry[name] = true, now
		a.sync.mu.Unlock()
		a.sync.wg.Add(1)
		go func() {
			defer a.sync.wg.Done()
			defer func() {
				a.sync.mu.Lock()
				delete(a.sync.running, name)
				a.sync.mu.Unlock()
			}()
			sctx, cancel := context.WithTimeout(ctx, syncTimeout)
			defer cancel()
			if err := a.syncSource(sctx, name, ""); err != nil {
				a.log.Warn("inventory sync failed", "source", name, "err", err)
			} else {
				a.log.Debug("inventory synced", "source", name)
			}
		}()
	}
}
