// Package api serves the public ferry.v1 API of the coordinator: every
// service's handlers, the mapping of errors to gRPC codes (the one place;
// the refusals themselves are package validate's), and the interceptors
// that forward writes from followers to the leader and make reads
// linearizable on request.
//
// Writes are validated, turned into one ledger command stamped with the
// leader's clock and identifiers, proposed through Raft, and answered with
// the resource read back from the local ledger. Reads come from the local
// ledger. Migration jobs are admitted by package admission (filling,
// references, pre-checks, addresses, the preview); their handlers only
// decode, call it, propose and encode.
package api

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferry-v2v/ferry/coordinator/internal/admission"
	"github.com/ferry-v2v/ferry/coordinator/internal/consensus"
	"github.com/ferry-v2v/ferry/coordinator/internal/fsm"
	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	"github.com/ferry-v2v/ferry/coordinator/internal/watch"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// DefaultForwardTimeouts is Deps.ForwardTimeout's default in heartbeat
// timeouts.
const DefaultForwardTimeouts = 4

// Proposer replicates commands and knows who leads; *consensus.Node is one.
type Proposer interface {
	// Propose replicates cmd and returns the FSM's result once applied
	// here; on a follower the error wraps consensus.ErrNotLeader.
	Propose(ctx context.Context, cmd *ledgerv1.Command) (fsm.Result, error)
	IsLeader() bool
	// LeaderAPIAddress is the leader's API address, "" when none is known.
	LeaderAPIAddress() string
	// LinearizableRead returns once a local read sees every acknowledged write.
	LinearizableRead(ctx context.Context) error
}

// Membership changes and reports the Raft configuration; *consensus.Node
// is one.
type Membership interface {
	ID() string
	AddVoter(ctx context.Context, id, raftAddr string) error
	RemoveVoter(ctx context.Context, id string) error
	Members() ([]consensus.Member, error)
	Stats() consensus.Stats
}

// Sealer seals credential secrets before they enter the log and
// fingerprints them with a key derived from the seal key; *seal.Sealer is
// one.
type Sealer interface {
	Seal(plaintext, aad []byte) ([]byte, error)
	Fingerprint(secret []byte) string
}

// Agents are the agent sessions of this node: they read a source's
// inventory through an agent and say which hosts are connected;
// *session.Manager is one.
type Agents interface {
	SourceInventory(ctx context.Context, src *ferryv1.Source, server *ferryv1.MigrationServer) (*ferryv1.SourceInventory, error)
	Connected(host string) bool
}

// Dialer opens a client connection to another coordinator's API address,
// with client mutual TLS in production.
type Dialer func(ctx context.Context, addr string) (*grpc.ClientConn, error)

// Deps are what the API needs. Ledger, Proposer, Membership, Hub and
// Sealer are required; the rest have defaults.
type Deps struct {
	Proposer   Proposer
	Membership Membership
	Ledger     *ledger.Ledger
	Hub        *watch.Hub
	Sealer     Sealer
	// Agents sync sources; without them SyncSource is UNIMPLEMENTED and
	// ListSourceVMs serves only what the ledger holds.
	Agents Agents
	// Dialer reaches the leader for forwarded calls; without one a
	// follower answers UNAVAILABLE with the leader's address.
	Dialer Dialer
	Logger *slog.Logger
	// Reads gate local reads on the applied index (read floor,
	// ferry-min-index, ferry-max-staleness) and let a forwarded call give
	// up on a silent leader; without it reads are served as they come.
	Reads ReadState
	// HeartbeatTimeout is Raft's (default consensus.DefaultHeartbeatTimeout):
	// a leader not heard from for this long is silent, and a node behind
	// waits half of it for its ledger to catch up before forwarding a read.
	HeartbeatTimeout time.Duration
	// ForwardTimeout bounds how long a forwarded call waits for a silent
	// leader, and a linearizable read for leadership to be confirmed; past
	// it the caller gets UNAVAILABLE with the leader known then. Default
	// four heartbeat timeouts.
	ForwardTimeout time.Duration
	// Clock stamps commands; default time.Now.
	Clock func() time.Time
	// NewID makes resource IDs; default a UUIDv7.
	NewID func() string
	// AuditRetention bounds the audit trail; zero fields take the
	// ledger's defaults (90 days, 100000 events).
	AuditRetention AuditRetention
	// AuditOff records no audit events (benchmarks measure their cost).
	AuditOff bool
}

// API implements the nine ferry.v1 services.
type API struct {
	proposer   Proposer
	membership Membership
	ledger     *ledger.Ledger
	hub        *watch.Hub
	sealer     Sealer
	agents     Agents
	log        *slog.Logger
	clock      func() time.Time
	newID      func() string

	admission *admission.Admission

	// settingsMu serialises read-merge-propose of UpdateSettings.
	settingsMu sync.Mutex

	fwd       *forwarder
	reads     ReadState
	heartbeat time.Duration // Deps.HeartbeatTimeout
	catchUp   time.Duration // how long a read waits for the ledger to catch up
	// forwardTimeout is Deps.ForwardTimeout.
	forwardTimeout time.Duration
	// floorReached and floorWaitLogged make the read floor logged once.
	floorReached, floorWaitLogged atomic.Bool
	watchBuffer                   int
	sync                          *syncer
	auditRetention                AuditRetention
	auditOff                      bool
	auditBatch                    auditBatcher
	// badText maps a decoded request to its first string field that was
	// not UTF-8; see textCodec.
	badText sync.Map
}

// New returns the API over deps. It panics when a required dependency is
// missing: that is a wiring bug, not a runtime condition.
func New(deps Deps) *API {
	if deps.Proposer == nil || deps.Membership == nil || deps.Ledger == nil || deps.Hub == nil || deps.Sealer == nil {
		panic("api.New: Proposer, Membership, Ledger, Hub and Sealer are required")
	}
	a := &API{
		proposer:    deps.Proposer,
		membership:  deps.Membership,
		ledger:      deps.Ledger,
		hub:         deps.Hub,
		sealer:      deps.Sealer,
		agents:      deps.Agents,
		log:         deps.Logger,
		clock:       deps.Clock,
		newID:       deps.NewID,
		watchBuffer: defaultWatchBuffer,
		sync:        newSyncer(),

		auditRetention: deps.AuditRetention,
		auditOff:       deps.AuditOff,
	}
	if a.auditRetention.MaxAge <= 0 {
		a.auditRetention.MaxAge = ledger.DefaultAuditMaxAge
	}
	if a.auditRetention.MaxEvents <= 0 {
		a.auditRetention.MaxEvents = ledger.DefaultAuditMaxEvents
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	a.log = a.log.With("component", "api")
	if a.clock == nil {
		a.clock = time.Now
	}
	if a.newID == nil {
		a.newID = func() string { return uuid.Must(uuid.NewV7()).String() }
	}
	a.reads, a.heartbeat, a.forwardTimeout = deps.Reads, deps.HeartbeatTimeout, deps.ForwardTimeout
	if a.heartbeat <= 0 {
		a.heartbeat = consensus.DefaultHeartbeatTimeout
	}
	if a.forwardTimeout <= 0 {
		a.forwardTimeout = DefaultForwardTimeouts * a.heartbeat
	}
	a.catchUp = a.heartbeat / 2
	a.fwd = newForwarder(a.proposer, deps.Dialer, a.log)
	if a.reads != nil {
		a.fwd.contact, a.fwd.timeout, a.fwd.silent = a.reads.LastContact, a.forwardTimeout, a.heartbeat
	}
	a.admission = admission.New(admission.Deps{
		Ledger: a.ledger, Agents: a.agents, ReadSource: a.readSourceSync,
		Record: func(ctx context.Context, cmd *ledgerv1.Command) error {
			_, err := a.propose(ctx, cmd)
			return err
		},
		Logger: deps.Logger, Clock: a.clock, NewID: a.newID,
	})
	return a
}

// Register registers all nine ferry.v1 services on s.
func (a *API) Register(s grpc.ServiceRegistrar) {
	ferryv1.RegisterTargetInventoryServiceServer(s, &targetInventoryService{a: a})
	ferryv1.RegisterMigrationServerServiceServer(s, &serverService{a: a})
	ferryv1.RegisterSourceServiceServer(s, &sourceService{a: a})
	ferryv1.RegisterMigrationJobServiceServer(s, &jobService{a: a})
	ferryv1.RegisterSettingsServiceServer(s, &settingsService{a: a})
	ferryv1.RegisterMembershipServiceServer(s, &membershipService{a: a})
	ferryv1.RegisterNetworkMappingServiceServer(s, &mappingService{a: a})
	ferryv1.RegisterCertificateServiceServer(s, &certificateService{a: a})
	ferryv1.RegisterAuditServiceServer(s, &auditService{a: a})
}

// propose stamps cmd with the leader's clock, replicates it and returns
// the names the FSM reported.
func (a *API) propose(ctx context.Context, cmd *ledgerv1.Command) ([]string, error) {
	cmd.Time = timestamppb.New(a.clock())
	if err := a.ledger.Refusal(cmd); err != nil {
		return nil, refusal(err)
	}
	res, err := a.proposer.Propose(ctx, cmd)
	noteIndex(ctx, res.Index)
	if err != nil {
		return nil, err
	}
	if res.Err != nil {
		return nil, res.Err
	}
	return res.Names, nil
}

// firstRequest returns the names a request ID created before, after
// checking they belong to collection.
func (a *API) firstRequest(requestID, collection string) ([]string, bool, error) {
	if requestID == "" {
		return nil, false, nil
	}
	rec, ok := a.ledger.RequestRecord(requestID, a.clock())
	if !ok {
		return nil, false, nil
	}
	names := rec.GetNames()
	if rec.GetMethod() != "" {
		return nil, false, invalid("request_id", "%q was already used by %s on %s", requestID, rec.GetMethod(), strings.Join(names, ", "))
	}
	if err := checkCollection(names, collection, requestID); err != nil {
		return nil, false, err
	}
	return names, true, nil
}

// createOne runs the common tail of a Create: request_id replay, proposal,
// and the name of the created resource.
func (a *API) createOne(ctx context.Context, requestID, collection string, cmd *ledgerv1.Command) (string, error) {
	if names, ok, err := a.firstRequest(requestID, collection); err != nil || ok {
		return firstName(names), err
	}
	names, err := a.propose(ctx, cmd)
	if err != nil {
		return "", err
	}
	if err := checkCollection(names, collection, requestID); err != nil {
		return "", err
	}
	return firstName(names), nil
}

// refusal names the request field a ledger refusal is about: the name
// of what a Create makes, or the name a Delete or a custom verb acts on.
func refusal(err error) error {
	msg := err.Error()
	switch {
	case errors.Is(err, ledger.ErrExists):
		name := strings.TrimSuffix(msg, ": "+ledger.ErrExists.Error())
		return &fieldError{Code: codes.AlreadyExists, Field: createdField[collectionOf(name)] + ".name", Msg: name + " already exists"}
	case errors.Is(err, ledger.ErrNotFound):
		return &fieldError{Code: codes.NotFound, Field: "name", Msg: strings.TrimSuffix(msg, ": "+ledger.ErrNotFound.Error()) + " not found"}
	case errors.Is(err, ledger.ErrFailedPrecondition):
		return precondition("name", "%s", strings.TrimPrefix(msg, ledger.ErrFailedPrecondition.Error()+": "))
	}
	return err
}

// createdField is the request field holding the resource a Create makes.
var createdField = map[string]string{
	colClusters: "cluster", colStorages: "primary_storage", colNetworks: "l3_network",
	colServers: "migration_server", colSources: "source", colCreds: "credential",
}

func checkCollection(names []string, collection, requestID string) error {
	for _, n := range names {
		if collectionOf(n) != collection {
			return invalid("request_id", "%q was already used by a request that created %s", requestID, n)
		}
	}
	return nil
}

func firstName(names []string) string {
	if len(names) == 0 {
		return ""
	}
	return names[0]
}
