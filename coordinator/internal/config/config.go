// Package config is the coordinator's configuration: flags fill a Config,
// Validate checks it, and the server is built from it. Only cmd/ reads the
// environment.
package config

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"time"
)

// Defaults of the one-node embedded install.
const (
	DefaultDataDir    = "./ferry-data"
	DefaultListen     = "127.0.0.1:7443"
	DefaultRaftListen = "127.0.0.1:7444"
	// DefaultAuditRetention and DefaultAuditMaxEvents bound the audit
	// trail (ledger.DefaultAuditMaxAge, ledger.DefaultAuditMaxEvents).
	DefaultAuditRetention = 90 * 24 * time.Hour
	DefaultAuditMaxEvents = 100_000
)

// ErrInvalid marks a configuration error; the message names the flag.
var ErrInvalid = errors.New("invalid configuration")

var nodeIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// Config configures one coordinator node.
type Config struct {
	// NodeID is the node's stable Raft identity; default "node-" plus the
	// Raft port.
	NodeID string
	// DataDir holds the Raft log, snapshots, the seal key and, for the
	// embedded default, its TLS material.
	DataDir string
	// Listen is the gRPC address for the API and agent streams.
	Listen string
	// Advertise is the API address other nodes and agents dial; default
	// the bound Listen address.
	Advertise string
	// RaftListen is the Raft transport's address.
	RaftListen string
	// RaftAdvertise is the Raft address peers dial; default the bound one.
	RaftAdvertise string
	// Join lists API addresses of existing members. With none, the node
	// bootstraps a one-node cluster (the embedded default).
	Join []string
	// Insecure serves plaintext gRPC. Only for trying things out: without
	// certificates there are no identities, so every caller may do
	// everything and an agent may say hello as any host.
	Insecure bool
	// AuthorizationOff serves TLS without authorizing calls by role. No flag
	// sets it: benchmarks use it to measure what authorization costs.
	AuthorizationOff bool
	// TLSDir is a PKI directory (ferry-coordinator tls init); default
	// DataDir/tls, created on first start.
	TLSDir string
	// KeyFile is the seal key; default DataDir/seal.key, created with
	// mode 0600 on first start of a bootstrapping node.
	KeyFile string
	// HeartbeatTimeout and ElectionTimeout tune Raft; zero takes defaults.
	HeartbeatTimeout time.Duration
	ElectionTimeout  time.Duration
	// TrailingLogs is how many log entries survive a snapshot; zero takes
	// the default. Tests set it low to force InstallSnapshot.
	TrailingLogs uint64
	// SnapshotThreshold is how many new log entries make Raft snapshot the
	// ledger, checked every SnapshotInterval; zero takes the defaults (8192
	// entries, 2 minutes). Tests set them low to force a snapshot.
	SnapshotThreshold uint64
	SnapshotInterval  time.Duration
	// MetricsListen is the address of the Prometheus /metrics endpoint,
	// off when empty: plain HTTP on a loopback address, otherwise HTTPS
	// with the API's certificate, for client certificates of the roles
	// authz's table gives authz.MetricsPath (operator, viewer).
	MetricsListen string
	// AuditRetention and AuditMaxEvents bound the audit trail; zero takes
	// the defaults. The leader stamps its own into each event it records.
	AuditRetention time.Duration
	AuditMaxEvents int
	// AuditOff records no audit events. No flag sets it: benchmarks use it
	// to measure what the audit trail costs.
	AuditOff bool
	// ForwardTimeout bounds how long a call forwarded to a leader this node
	// no longer hears from, and a linearizable read, wait before answering
	// UNAVAILABLE with the leader known then; zero takes the default (four
	// heartbeat timeouts).
	ForwardTimeout time.Duration
}

// WithDefaults fills the derived paths.
func (c Config) WithDefaults() Config {
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.RaftListen == "" {
		c.RaftListen = DefaultRaftListen
	}
	if c.TLSDir == "" {
		c.TLSDir = filepath.Join(c.DataDir, "tls")
	}
	if c.KeyFile == "" {
		c.KeyFile = filepath.Join(c.DataDir, "seal.key")
	}
	return c
}

// Bootstrap says whether this node forms a new cluster of its own.
func (c Config) Bootstrap() bool { return len(c.Join) == 0 }

// Validate reports the first invalid setting, naming its flag.
func (c Config) Validate() error {
	if c.NodeID != "" && !nodeIDPattern.MatchString(c.NodeID) {
		return fmt.Errorf("%w: --node-id %q: use letters, digits, '.', '_' or '-', at most 63", ErrInvalid, c.NodeID)
	}
	for flag, addr := range map[string]string{"--listen": c.Listen, "--raft-listen": c.RaftListen} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("%w: %s %q: %v", ErrInvalid, flag, addr, err)
		}
	}
	for flag, addr := range map[string]string{"--advertise": c.Advertise, "--raft-advertise": c.RaftAdvertise} {
		if addr == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("%w: %s %q: %v", ErrInvalid, flag, addr, err)
		}
	}
	for _, addr := range c.Join {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("%w: --join %q: %v", ErrInvalid, addr, err)
		}
	}
	if c.DataDir == "" {
		return fmt.Errorf("%w: --data-dir is required", ErrInvalid)
	}
	if c.MetricsListen != "" {
		if _, _, err := net.SplitHostPort(c.MetricsListen); err != nil {
			return fmt.Errorf("%w: --metrics-listen %q: %v", ErrInvalid, c.MetricsListen, err)
		}
	}
	if c.AuditRetention < 0 || c.AuditRetention > 0 && c.AuditRetention < time.Hour {
		return fmt.Errorf("%w: --audit-retention %v: use at least 1h", ErrInvalid, c.AuditRetention)
	}
	if c.AuditMaxEvents < 0 || c.AuditMaxEvents > 10_000_000 {
		return fmt.Errorf("%w: --audit-max-events %d: use 1 to 10000000", ErrInvalid, c.AuditMaxEvents)
	}
	if c.ForwardTimeout < 0 || (c.ForwardTimeout > 0 && c.ForwardTimeout < 100*time.Millisecond) {
		return fmt.Errorf("%w: --forward-timeout %v: use at least 100ms, or 0 for the default", ErrInvalid, c.ForwardTimeout)
	}
	if c.SnapshotInterval < 0 || (c.SnapshotInterval > 0 && c.SnapshotInterval < 100*time.Millisecond) {
		return fmt.Errorf("%w: --snapshot-interval %v: use at least 100ms, or 0 for the default", ErrInvalid, c.SnapshotInterval)
	}
	return nil
}
