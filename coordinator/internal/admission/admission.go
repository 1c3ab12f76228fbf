// Package admission turns a CreateMigrationJobs request, read against the
// ledger, into the command that creates its jobs, stamped with their
// names and addresses, and answers PreviewMigrationJobs with what the
// same batch would use. The API's handlers call it and keep the transport
// (decode, propose, map errors, encode); the scheduler and the preview
// read a migration server's cache room through package capacity, so both
// show the same figure.
//
// A batch goes through these steps, in order (see Create and Preview):
//
//  1. fill: complete the specs that leave something out from the source
//     VMs' descriptions and the request's network-mapping group
//     (pkg/targetspec), syncing the source first when needed;
//  2. check: validate the request on its own and name its jobs;
//  3. refs: resolve the source, the migration server and what each
//     target refers to (cluster, primary storage, host, L3 networks);
//  4. precheck: compare the batch with the source's synced inventory
//     (VMs, disks, MACs, templates, maintenance, versions);
//  5. start state: settle an unset auto_start from the source VM's state;
//  6. allocate: give every NIC an address of its network's range;
//  7. capacity (preview only): what the batch takes of CPUs, memory,
//     storage space, addresses and the migration server's cache.
//
// Host placement (6b, package placement) runs between 6 and 7: it stamps
// each job's target_host and placement_reason, and the capacity step then
// counts what each chosen host gives.
//
// Errors are package validate's: *validate.InvalidError for the request's
// own fields, *validate.FieldError for NOT_FOUND and FAILED_PRECONDITION.
package admission

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// Agents are the agent sessions of this node; *session.Manager is one.
// Only the leader's has connected agents.
type Agents interface {
	Connected(host string) bool
}

// liveFacts is what the session manager knows of its connected agents:
// fresher than the facts the ledger records every checkpoint interval.
// *session.Manager is one.
type liveFacts interface {
	Hosts() map[string]*ferryv1.HostFacts
}

// Deps are what admission needs. Ledger, ReadSource and Record are
// required.
type Deps struct {
	Ledger *ledger.Ledger
	// Agents reach the sources; nil when this node has no agent
	// sessions: specs are then not filled and sources not synced.
	Agents Agents
	// ReadSource has an agent read the inventory of source through
	// server (any suitable one when "") without recording it: the record
	// to write (nil when there is nothing to record) and the sync's
	// error.
	ReadSource func(ctx context.Context, source, server string) (*ledgerv1.RecordSourceSync, error)
	// Record proposes a command: the source syncs a batch needed.
	Record func(ctx context.Context, cmd *ledgerv1.Command) error
	Logger *slog.Logger
	// Clock stamps the syncs kept for a batch; default time.Now.
	Clock func() time.Time
	// NewID makes job IDs.
	NewID func() string
}

// Admission admits batches of migration jobs.
type Admission struct {
	ledger     *ledger.Ledger
	agents     Agents
	readSource func(ctx context.Context, source, server string) (*ledgerv1.RecordSourceSync, error)
	record     func(ctx context.Context, cmd *ledgerv1.Command) error
	log        *slog.Logger
	clock      func() time.Time
	newID      func() string

	// allocMu is held from address allocation until the command that
	// records the addresses is applied, so concurrent creates on the
	// leader never pick the same address. It guards heldPrefix.
	allocMu sync.Mutex
	// heldPrefix remembers, by L3 network, where the run of held
	// addresses from the start of its range ended (see allocator).
	heldPrefix map[string]prefixHint
}

// New returns the admission over deps. It panics when a required
// dependency is missing: that is a wiring bug, not a runtime condition.
func New(deps Deps) *Admission {
	if deps.Ledger == nil || deps.ReadSource == nil || deps.Record == nil || deps.NewID == nil {
		panic("admission.New: Ledger, ReadSource, Record and NewID are required")
	}
	a := &Admission{ledger: deps.Ledger, agents: deps.Agents, readSource: deps.ReadSource, record: deps.Record,
		log: deps.Logger, clock: deps.Clock, newID: deps.NewID, heldPrefix: map[string]prefixHint{}}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	a.log = a.log.With("component", "admission")
	if a.clock == nil {
		a.clock = time.Now
	}
	return a
}

// Admitted is a batch ready to be proposed. It holds the allocation lock
// until Release: the caller proposes Command first.
type Admitted struct {
	// Command is CreateMigrationJobs, its jobs named and addressed.
	Command *ledgerv1.Command
	release func()
}

// Release lets the next batch allocate addresses. Call it once the
// command was applied or refused.
func (ad *Admitted) Release() { ad.release() }

// Create admits a batch: steps 1 to 6. Every pre-check that fails is one
// line of a FAILED_PRECONDITION; nothing is written then. The source
// syncs the checks needed are recorded (through Deps.Record) once every
// check has passed, before the caller proposes the batch.
func (a *Admission) Create(ctx context.Context, req *ferryv1.CreateMigrationJobsRequest) (*Admitted, error) {
	// What the checks read from sources is recorded only if all pass.
	syncs := a.newBatchSyncs()
	req, _, err := a.fillBatch(ctx, req, true, syncs) // 1; the notes are the preview's
	if err != nil {
		return nil, err
	}
	b, err := a.prepare(ctx, req, true, syncs) // 2 to 4
	if err != nil {
		return nil, err
	}
	if err := checkVMsKnown(b.refs, b.jobs, syncs); err != nil {
		return nil, err
	}
	if len(b.failed) > 0 {
		return nil, precheckError(b.failed)
	}
	a.keepSourceState(b.refs.source.GetName(), b.jobs) // 5
	a.stampPrecopyInterval(b.jobs)
	a.allocMu.Lock()
	release := sync.OnceFunc(a.allocMu.Unlock)
	al := a.newAllocator(b.refs.networks) // 6
	al.remember(a.heldPrefix)
	if err := al.allocate(b.jobs); err != nil {
		release()
		return nil, err
	}
	// 6b: host placement. The jobs have their addresses, and the
	// allocation lock keeps its choices and those of a concurrent batch
	// apart until the command is applied.
	for _, err := range a.place(b.refs, b.jobs) {
		if err != nil {
			release()
			return nil, err
		}
	}
	if err := syncs.record(ctx); err != nil {
		release()
		return nil, err
	}
	cmd := &ledgerv1.Command{Op: &ledgerv1.Command_CreateMigrationJobs{CreateMigrationJobs: &ledgerv1.CreateMigrationJobs{
		Jobs: b.jobs, RequestId: req.GetRequestId(),
	}}}
	return &Admitted{Command: cmd, release: release}, nil
}

// batch is a request's jobs once checked and resolved, with the
// pre-check lines that failed.
type batch struct {
	jobs   []*ferryv1.MigrationJob
	refs   *batchRefs
	failed []string
}

// prepare runs steps 2 to 4 on a filled request.
func (a *Admission) prepare(ctx context.Context, req *ferryv1.CreateMigrationJobsRequest, resync bool, syncs *batchSyncs) (*batch, error) {
	jobs, err := a.checkBatch(req)
	if err != nil {
		return nil, err
	}
	refs, err := a.resolveBatch(req)
	if err != nil {
		return nil, err
	}
	for i, j := range jobs {
		if err := a.checkTargetRefs(i, j.GetTarget(), refs); err != nil {
			return nil, err
		}
	}
	return &batch{jobs: jobs, refs: refs, failed: a.precheck(ctx, refs, jobs, resync, syncs)}, nil
}
