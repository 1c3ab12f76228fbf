// Package consensus is the Raft node of the coordinator: it replicates
// ledger commands through hashicorp/raft with a raft-boltdb log and stable
// store and file snapshots, and reports leadership and membership.
package consensus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// Sentinel errors. Errors returned by this package wrap them with context.
var (
	// ErrNotLeader means this node cannot accept the request because it
	// is not the leader; send it to LeaderAPIAddress instead.
	ErrNotLeader = errors.New("not the raft leader")
	// ErrLeadershipLost means leadership was lost while a command was in
	// flight: it may or may not have been committed.
	ErrLeadershipLost = errors.New("raft leadership lost, outcome unknown")
	// ErrShutdown means the node has been shut down.
	ErrShutdown = errors.New("raft node is shut down")
	// ErrTimeout means Raft did not take the request in time.
	ErrTimeout = errors.New("raft request timed out")
)

// Node is one coordinator's Raft member.
type Node struct {
	cfg   Config
	log   *slog.Logger
	raft  *raft.Raft
	trans *raft.NetworkTransport
	// stream is trans's stream layer; AddVoter probes new members with it.
	stream *streamLayer
	store  *raftboltdb.BoltStore

	notifyCh chan bool
	ctx      context.Context // cancelled by Shutdown
	cancel   context.CancelFunc
	wg       sync.WaitGroup // goroutines owned by the node

	leadership leadership

	// readFloor is the last index of the Raft log (or snapshot) found at
	// Open: at least every index this node applied, and so answered reads
	// from, before it restarted. Local reads wait until it is applied.
	readFloor uint64

	shutdownOnce sync.Once
	shutdownErr  error
}

// Open starts the Raft node described by cfg around fsm. If cfg.Bootstrap
// is set and DataDir holds no Raft state, it bootstraps a one-node cluster
// of itself; otherwise it resumes its state, or waits to be added by a
// leader (AddVoter).
func Open(cfg Config, fsm raft.FSM) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	n := &Node{
		cfg:      cfg,
		log:      cfg.Logger.With("component", "consensus", "node", cfg.NodeID),
		notifyCh: make(chan bool, 8),
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	if err := n.open(fsm); err != nil {
		if n.raft != nil {
			_ = n.raft.Shutdown().Error()
		}
		n.cancel()
		_ = n.closeResources()
		return nil, err
	}
	n.wg.Add(1)
	go n.watchLeadership()
	n.log.Info("raft node started", "raft_address", n.RaftAddress(), "data_dir", cfg.DataDir)
	n.awaitSoloLeadership()
	return n, nil
}

// awaitSoloLeadership waits, when this node is the only voter, until it
// has elected itself, so that a one-node cluster serves writes as soon as
// Open returns. It gives up quietly after a few election rounds.
func (n *Node) awaitSoloLeadership() {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return
	}
	servers := f.Configuration().Servers
	if len(servers) != 1 || servers[0].ID != raft.ServerID(n.cfg.NodeID) || servers[0].Suffrage != raft.Voter {
		return
	}
	ch, cancel := n.SubscribeLeadership()
	defer cancel()
	timer := time.NewTimer(4 * (n.cfg.HeartbeatTimeout + n.cfg.ElectionTimeout))
	defer timer.Stop()
	for {
		select {
		case leader, ok := <-ch:
			if !ok || leader {
				return
			}
		case <-timer.C:
			n.log.Warn("sole voter has not elected itself yet")
			return
		}
	}
}

func (n *Node) open(fsm raft.FSM) error {
	cfg := n.cfg
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("create data dir: %w", err)
	}
	store, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(cfg.DataDir, "raft.db")})
	if err != nil {
		return fmt.Errorf("open raft store: %w", err)
	}
	n.store = store
	hcl := n.cfg.raftLogger()
	snaps, err := openSnapshots(cfg.DataDir, snapshotsRetained, hcl.Named("snapshot"))
	if err != nil {
		return fmt.Errorf("open snapshot store: %w", err)
	}
	if n.trans, err = n.newTransport(hcl); err != nil {
		return err
	}
	rc := cfg.raftConfig()
	rc.NotifyCh = n.notifyCh
	rc.Logger = hcl
	existing, err := raft.HasExistingState(store, store, snaps)
	if err != nil {
		return fmt.Errorf("check raft state: %w", err)
	}
	if n.raft, err = raft.NewRaft(rc, fsm, store, store, snaps, n.trans); err != nil {
		return fmt.Errorf("start raft: %w", err)
	}
	n.readFloor = n.raft.LastIndex()
	if cfg.Bootstrap && !existing {
		boot := raft.Configuration{Servers: []raft.Server{{
			Suffrage: raft.Voter, ID: rc.LocalID, Address: n.trans.LocalAddr(),
		}}}
		if err := n.raft.BootstrapCluster(boot).Error(); err != nil {
			return fmt.Errorf("bootstrap cluster: %w", err)
		}
		n.log.Info("bootstrapped one-node cluster")
	}
	return nil
}

func (n *Node) newTransport(hcl *hcLogger) (*raft.NetworkTransport, error) {
	var advertise net.Addr // nil: the bound address
	if n.cfg.RaftAdvertise != "" {
		addr, err := net.ResolveTCPAddr("tcp", n.cfg.RaftAdvertise)
		if err != nil {
			return nil, fmt.Errorf("resolve raft advertise address %s: %w", n.cfg.RaftAdvertise, err)
		}
		advertise = addr
	}
	stream, err := newStreamLayer(n.cfg.RaftBind, advertise, n.cfg.TLS)
	if err != nil {
		return nil, fmt.Errorf("listen for raft on %s: %w", n.cfg.RaftBind, err)
	}
	n.stream = stream
	return raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: stream, MaxPool: transportPool, Timeout: transportTimeout, Logger: hcl.Named("transport"),
	}), nil
}

// Shutdown stops Raft, the node's goroutines and closes its stores. It is
// idempotent; later calls return the first call's result.
func (n *Node) Shutdown() error {
	n.shutdownOnce.Do(func() {
		var errs []error
		if err := n.raft.Shutdown().Error(); err != nil {
			errs = append(errs, fmt.Errorf("shut down raft: %w", err))
		}
		n.cancel() // releases waiters on futures Raft abandoned
		n.wg.Wait()
		n.leadership.close()
		if err := n.closeResources(); err != nil {
			errs = append(errs, err)
		}
		n.shutdownErr = errors.Join(errs...)
		n.log.Info("raft node stopped")
	})
	return n.shutdownErr
}

// closeResources closes the transport and store; raft must be stopped.
func (n *Node) closeResources() error {
	var errs []error
	if n.trans != nil {
		if err := n.trans.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close raft transport: %w", err))
		}
	}
	if n.store != nil {
		if err := n.store.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close raft store: %w", err))
		}
	}
	return errors.Join(errs...)
}

// ID is this node's id.
func (n *Node) ID() string { return n.cfg.NodeID }

// RaftAddress is the address peers reach this node's Raft transport at.
func (n *Node) RaftAddress() string { return string(n.trans.LocalAddr()) }

// IsLeader reports whether this node currently believes it is the leader.
// Use LinearizableRead to be sure.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// Leader reports the known leader's id and Raft address, or empty strings.
func (n *Node) Leader() (id, raftAddr string) {
	addr, sid := n.raft.LeaderWithID()
	return string(sid), string(addr)
}

// LeaderAPIAddress resolves the known leader's API address: this node's
// own APIAddress when it leads, otherwise the api_address of the leader's
// PutNode record, read through Config.NodeLookup. It is "" when there is
// no known leader or its record is not (yet) in the ledger: a new leader
// records itself right after its election.
func (n *Node) LeaderAPIAddress() string {
	id, _ := n.Leader()
	switch {
	case id == "":
		return ""
	case id == n.cfg.NodeID:
		return n.cfg.APIAddress
	case n.cfg.NodeLookup == nil:
		return ""
	}
	if node, ok := n.cfg.NodeLookup(id); ok {
		return node.GetApiAddress()
	}
	return ""
}

// ReadFloor is the highest log index this node may have applied before it
// was (re)started: the last index of its durable log and snapshots at
// Open. A read served before the ledger reached it could be older than one
// this node answered before a restart.
func (n *Node) ReadFloor() uint64 { return n.readFloor }

// LastContact is when this follower last heard from the leader; the zero
// time when it never has. A leader reports now.
func (n *Node) LastContact() time.Time {
	if n.IsLeader() {
		return time.Now()
	}
	return n.raft.LastContact()
}

// HeartbeatTimeout is the configured Raft heartbeat timeout: a follower
// that has not heard from the leader for this long starts an election.
func (n *Node) HeartbeatTimeout() time.Duration { return n.cfg.HeartbeatTimeout }

// Stats are Raft indexes of this node.
type Stats struct {
	State             string
	Term              uint64
	LastIndex         uint64
	LastLogTerm       uint64
	CommitIndex       uint64
	AppliedIndex      uint64
	LastSnapshotIndex uint64
	LastContact       time.Time
}

// Stats reports this node's Raft state and indexes.
func (n *Node) Stats() Stats {
	rs := n.raft.Stats()
	snapIdx, _ := strconv.ParseUint(rs["last_snapshot_index"], 10, 64)
	lastLogTerm, _ := strconv.ParseUint(rs["last_log_term"], 10, 64)
	return Stats{
		State:             n.raft.State().String(),
		Term:              n.raft.CurrentTerm(),
		LastIndex:         n.raft.LastIndex(),
		LastLogTerm:       lastLogTerm,
		CommitIndex:       n.raft.CommitIndex(),
		AppliedIndex:      n.raft.AppliedIndex(),
		LastSnapshotIndex: snapIdx,
		LastContact:       n.raft.LastContact(),
	}
}

// Snapshot forces a snapshot now and compacts the log down to the
// configured TrailingLogs. Having nothing new to snapshot is not an error.
func (n *Node) Snapshot() error {
	err := n.raft.Snapshot().Error()
	if errors.Is(err, raft.ErrNothingNewToSnapshot) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("snapshot: %w", n.mapErr(err))
	}
	return nil
}
