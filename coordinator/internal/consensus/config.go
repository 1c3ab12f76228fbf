package consensus

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/hashicorp/raft"

	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
)

// Defaults tuned for a LAN or loopback: a follower notices a dead leader
// after 0.5–1 s and a new leader is elected well within 2 s.
const (
	DefaultHeartbeatTimeout  = 500 * time.Millisecond
	DefaultElectionTimeout   = 500 * time.Millisecond
	DefaultCommitTimeout     = 20 * time.Millisecond
	DefaultMaxAppendEntries  = 256
	DefaultSnapshotThreshold = 8192
	DefaultSnapshotInterval  = 2 * time.Minute
	DefaultTrailingLogs      = 10240
	DefaultApplyTimeout      = 10 * time.Second
	// snapshotsRetained is how many file snapshots stay on disk.
	snapshotsRetained = 2
	// transportPool is the number of pooled connections per peer.
	transportPool = 3
	// transportTimeout bounds each transport I/O operation.
	transportTimeout = 10 * time.Second
)

// Config configures one Raft node of the coordinator. Zero durations and
// counts take the defaults above.
type Config struct {
	// NodeID is the stable identity of this coordinator across restarts.
	NodeID string
	// DataDir holds raft.db (log and stable store) and snapshots/.
	DataDir string
	// RaftBind is the TCP listen address of the Raft transport. Port 0
	// picks a free port; RaftAddress reports the one chosen.
	RaftBind string
	// RaftAdvertise is the address peers dial; empty means the bound
	// address, which must then not be unspecified (0.0.0.0).
	RaftAdvertise string
	// APIAddress is this node's gRPC address. The leader records it in
	// the ledger (PutNode) so followers can forward writes to it.
	APIAddress string
	// Bootstrap makes a node with no Raft state form a one-node cluster
	// of itself. It is ignored when the data directory has state.
	Bootstrap bool
	// NodeLookup reads a coordinator's PutNode record from the ledger;
	// wire it to the FSM's ledger: fsm.Ledger().Node. LeaderAPIAddress
	// uses it, and a new leader records itself when its record is missing
	// or stale. When nil, only this node's own address can be resolved
	// and the leader does not record itself.
	NodeLookup func(id string) (*ledgerv1.Node, bool)
	// TLS runs Raft over mutual TLS with this coordinator's certificate
	// and the cluster's CA; both ends must present a coordinator
	// certificate. Nil means plain TCP, for --insecure only.
	TLS *PeerTLS
	// Logger receives this node's and Raft's logs. Nil discards them.
	Logger *slog.Logger
	// OnApply, when set, is told how long each proposal took from Propose
	// until this node applied it (the coordinator's metrics).
	OnApply func(time.Duration)

	HeartbeatTimeout time.Duration
	ElectionTimeout  time.Duration
	// LeaderLeaseTimeout defaults to HeartbeatTimeout and may not exceed it.
	LeaderLeaseTimeout time.Duration
	CommitTimeout      time.Duration
	// MaxAppendEntries is also the largest batch of commands written to
	// disk and handed to the FSM at once.
	MaxAppendEntries  int
	SnapshotThreshold uint64
	SnapshotInterval  time.Duration
	TrailingLogs      uint64
	// ApplyTimeout bounds Propose and membership changes whose context
	// has no deadline.
	ApplyTimeout time.Duration
}

// Validate reports the first invalid field, naming it.
func (c *Config) Validate() error {
	switch {
	case c.NodeID == "":
		return errors.New("consensus config: NodeID is required")
	case c.DataDir == "":
		return errors.New("consensus config: DataDir is required")
	case c.RaftBind == "":
		return errors.New("consensus config: RaftBind is required")
	}
	host, _, err := net.SplitHostPort(c.RaftBind)
	if err != nil {
		return fmt.Errorf("consensus config: RaftBind %q: %w", c.RaftBind, err)
	}
	if ip := net.ParseIP(host); c.RaftAdvertise == "" && (host == "" || ip != nil && ip.IsUnspecified()) {
		return fmt.Errorf("consensus config: RaftAdvertise is required when RaftBind %q listens on all addresses", c.RaftBind)
	}
	if c.RaftAdvertise != "" {
		if _, err := net.ResolveTCPAddr("tcp", c.RaftAdvertise); err != nil {
			return fmt.Errorf("consensus config: RaftAdvertise %q: %w", c.RaftAdvertise, err)
		}
	}
	if c.HeartbeatTimeout < 0 || c.ElectionTimeout < 0 || c.LeaderLeaseTimeout < 0 ||
		c.CommitTimeout < 0 || c.SnapshotInterval < 0 || c.ApplyTimeout < 0 || c.MaxAppendEntries < 0 {
		return errors.New("consensus config: durations and MaxAppendEntries must not be negative")
	}
	rc := c.raftConfig()
	if err := raft.ValidateConfig(rc); err != nil {
		return fmt.Errorf("consensus config: %w", err)
	}
	return nil
}

// withDefaults returns a copy of c with zero fields set to defaults.
func (c Config) withDefaults() Config {
	setDur := func(d *time.Duration, def time.Duration) {
		if *d == 0 {
			*d = def
		}
	}
	setDur(&c.HeartbeatTimeout, DefaultHeartbeatTimeout)
	setDur(&c.ElectionTimeout, DefaultElectionTimeout)
	setDur(&c.LeaderLeaseTimeout, c.HeartbeatTimeout)
	setDur(&c.CommitTimeout, DefaultCommitTimeout)
	setDur(&c.SnapshotInterval, DefaultSnapshotInterval)
	setDur(&c.ApplyTimeout, DefaultApplyTimeout)
	if c.MaxAppendEntries == 0 {
		c.MaxAppendEntries = DefaultMaxAppendEntries
	}
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = DefaultSnapshotThreshold
	}
	if c.TrailingLogs == 0 {
		c.TrailingLogs = DefaultTrailingLogs
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// raftConfig translates c (with defaults) into hashicorp/raft's Config.
func (c Config) raftConfig() *raft.Config {
	c = c.withDefaults()
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(c.NodeID)
	rc.HeartbeatTimeout = c.HeartbeatTimeout
	rc.ElectionTimeout = c.ElectionTimeout
	rc.LeaderLeaseTimeout = c.LeaderLeaseTimeout
	rc.CommitTimeout = c.CommitTimeout
	rc.MaxAppendEntries = c.MaxAppendEntries
	// Concurrent Apply calls queue up to MaxAppendEntries deep, so the
	// leader writes them to disk and the FSM applies them as one batch.
	rc.BatchApplyCh = true
	rc.SnapshotThreshold = c.SnapshotThreshold
	rc.SnapshotInterval = c.SnapshotInterval
	rc.TrailingLogs = c.TrailingLogs
	rc.ShutdownOnRemove = true
	rc.Logger = c.raftLogger()
	return rc
}

// raftLogger is the hclog face of Config.Logger for Raft's own logs.
func (c Config) raftLogger() *hcLogger {
	l := c.Logger
	if l == nil {
		l = slog.New(slog.DiscardHandler)
	}
	return newHCLogger(l.With("component", "raft", "node", c.NodeID))
}
