// Package server wires a coordinator node together: the ledger and its
// FSM, the Raft node, the public API, agent sessions and the scheduler,
// all served by one gRPC server on one port.
package server

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/ferry-v2v/ferry/coordinator/internal/authz"
	"github.com/ferry-v2v/ferry/coordinator/internal/config"
	"github.com/ferry-v2v/ferry/coordinator/internal/consensus"
	"github.com/ferry-v2v/ferry/coordinator/internal/fsm"
	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	"github.com/ferry-v2v/ferry/coordinator/internal/metrics"
	"github.com/ferry-v2v/ferry/coordinator/internal/watch"
	"github.com/ferry-v2v/ferry/pkg/promserve"
	"github.com/ferry-v2v/ferry/pkg/seal"
	"github.com/ferry-v2v/ferry/pkg/tlsutil"
)

// Server is one running coordinator node.
type Server struct {
	cfg    config.Config
	log    *slog.Logger
	lis    net.Listener
	addr   string
	ledger *ledger.Ledger
	fsm    *fsm.FSM
	node   *consensus.Node
	hub    *watch.Hub
	grpc   *grpc.Server
	health *health.Server
	peers  *peerDialer
	parts  parts
	// metrics are always kept; scrape is their /metrics endpoint, nil
	// without --metrics-listen.
	metrics *metrics.Metrics
	scrape  *promserve.Server

	mu        sync.Mutex
	cancelRun context.CancelFunc
	stopOnce  sync.Once
}

// New prepares a node: data directory, seal key, TLS material, the API
// listener and the Raft node. Serving starts with Run.
func New(cfg config.Config, log *slog.Logger) (*Server, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	id, err := nodeID(cfg)
	if err != nil {
		return nil, err
	}
	cfg.NodeID = id
	s := &Server{cfg: cfg, log: log.With("node", id)}
	if err := s.open(); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

func (s *Server) open() error {
	sealer, err := loadSealer(s.cfg)
	if err != nil {
		return err
	}
	serverCreds, peerCreds, err := transportCredentials(s.cfg, s.revoked)
	if err != nil {
		return err
	}
	raftTLS, err := raftPeerTLS(s.cfg)
	if err != nil {
		return err
	}
	s.lis, err = net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on --listen %s: %w", s.cfg.Listen, err)
	}
	s.addr = s.cfg.Advertise
	if s.addr == "" {
		s.addr = s.lis.Addr().String()
	}
	s.ledger = ledger.New()
	s.fsm = fsm.New(s.ledger, s.log)
	s.hub = watch.New(s.ledger.Job)
	s.metrics = metrics.New(metrics.Deps{Ledger: s.ledger, Raft: s.raftStats})
	s.ledger.SetObserver(func(ev ledger.JobEvent) {
		s.hub.JobChanged(ev)
		s.metrics.JobChanged(ev)
	})
	s.node, err = consensus.Open(consensus.Config{
		NodeID: s.cfg.NodeID, DataDir: filepath.Join(s.cfg.DataDir, "raft"),
		RaftBind: s.cfg.RaftListen, RaftAdvertise: s.cfg.RaftAdvertise, APIAddress: s.addr,
		Bootstrap: s.cfg.Bootstrap(), NodeLookup: s.ledger.Node, TLS: raftTLS, Logger: s.log,
		HeartbeatTimeout: s.cfg.HeartbeatTimeout, ElectionTimeout: s.cfg.ElectionTimeout,
		TrailingLogs: s.cfg.TrailingLogs, SnapshotThreshold: s.cfg.SnapshotThreshold, SnapshotInterval: s.cfg.SnapshotInterval,
		OnApply: s.metrics.ObserveApply,
	}, s.fsm)
	if err != nil {
		return fmt.Errorf("open raft node: %w", err)
	}
	s.peers = newPeerDialer(peerCreds)
	s.parts = newParts(s, sealer)
	s.grpc = grpc.NewServer(
		grpc.Creds(serverCreds),
		s.parts.api.ServerOption(),
		grpc.ChainUnaryInterceptor(s.parts.unary...),
		grpc.ChainStreamInterceptor(s.parts.stream...),
	)
	s.parts.register(s.grpc)
	s.health = health.NewServer()
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
	return s.listenMetrics()
}

// listenMetrics binds --metrics-listen: plain HTTP on loopback, else HTTPS
// with the API's certificate for the roles authz gives authz.MetricsPath.
func (s *Server) listenMetrics() error {
	if s.cfg.MetricsListen == "" {
		return nil
	}
	opts := promserve.Options{Addr: s.cfg.MetricsListen, Gatherer: s.metrics.Registry(), Logger: s.log,
		Allowed: func(r tlsutil.Role) bool { return authz.Allowed(r, authz.MetricsPath) }}
	if !s.cfg.Insecure && !promserve.IsLoopback(s.cfg.MetricsListen) {
		tc, err := tlsutil.ServerConfig(s.cfg.TLSDir)
		if err != nil {
			return fmt.Errorf("--metrics-listen: --tls-dir %s: %w", s.cfg.TLSDir, err)
		}
		tc.VerifyPeerCertificate = refuseRevoked(s.revoked)
		opts.TLS = tc
	}
	var err error
	s.scrape, err = promserve.Listen(opts)
	return err
}

// MetricsAddr is the bound /metrics address, "" without --metrics-listen.
func (s *Server) MetricsAddr() string {
	if s.scrape == nil {
		return ""
	}
	return s.scrape.Addr()
}

// raftStats are the Raft gauges' source.
func (s *Server) raftStats() (consensus.Stats, bool) {
	if s.node == nil {
		return consensus.Stats{}, false
	}
	return s.node.Stats(), s.node.IsLeader()
}

// countLeaderChanges counts this node's leadership changes until ctx ends.
func (s *Server) countLeaderChanges(ctx context.Context) {
	ch, cancel := s.node.SubscribeLeadership()
	defer cancel()
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-ch:
			if !ok {
				return
			}
			s.metrics.LeadershipChanged()
		}
	}
}

// Run serves until ctx ends, then stops the node.
func (s *Server) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.mu.Lock()
	s.cancelRun = cancel
	s.mu.Unlock()
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := s.grpc.Serve(s.lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("serve gRPC: %w", err)
		}
		return nil
	})
	s.parts.run(ctx, g, s.node, s.log)
	g.Go(func() error { s.countLeaderChanges(ctx); return nil })
	if s.scrape != nil {
		g.Go(func() error { return s.scrape.Serve(ctx) })
	}
	if !s.cfg.Bootstrap() {
		g.Go(func() error { return s.join(ctx) })
	}
	s.log.Info("coordinator serving", "api", s.addr, "raft", s.node.RaftAddress(), "bootstrap", s.cfg.Bootstrap(), "tls", !s.cfg.Insecure)
	g.Go(func() error {
		<-ctx.Done()
		s.shutdown()
		return nil
	})
	return g.Wait()
}

// shutdown stops gracefully, then hard after a few seconds.
func (s *Server) shutdown() {
	s.health.Shutdown()
	done := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
	}
	s.Stop()
}

// Stop kills the node at once: connections cut, Raft shut down. Tests
// use it to kill a leader; it is safe to call more than once.
func (s *Server) Stop() {
	s.mu.Lock()
	if s.cancelRun != nil {
		s.cancelRun()
	}
	s.mu.Unlock()
	s.stopOnce.Do(func() {
		if s.grpc != nil {
			s.grpc.Stop()
		}
		if s.lis != nil {
			_ = s.lis.Close()
		}
		if s.scrape != nil {
			_ = s.scrape.Close()
		}
		if s.node != nil {
			if err := s.node.Shutdown(); err != nil {
				s.log.Warn("raft shutdown", "err", err)
			}
		}
		if s.peers != nil {
			s.peers.close()
		}
	})
}

// Addr is the API address (the advertised one when set).
func (s *Server) Addr() string { return s.addr }

// ID is the node's Raft ID.
func (s *Server) ID() string { return s.cfg.NodeID }

// Node is the Raft node.
func (s *Server) Node() *consensus.Node { return s.node }

// Restores counts how often the ledger was replaced by a Raft snapshot.
func (s *Server) Restores() int64 { return s.fsm.Restores() }

// Ledger is the node's local ledger.
func (s *Server) Ledger() *ledger.Ledger { return s.ledger }

// nodeID returns the configured ID, or the one this data dir has, or a
// new one that is remembered there.
func nodeID(cfg config.Config) (string, error) {
	path := filepath.Join(cfg.DataDir, "node-id")
	if b, err := os.ReadFile(path); err == nil {
		old := strings.TrimSpace(string(b))
		if cfg.NodeID != "" && cfg.NodeID != old {
			return "", fmt.Errorf("%w: --node-id %s, but data dir %s belongs to node %s", config.ErrInvalid, cfg.NodeID, cfg.DataDir, old)
		}
		return old, nil
	}
	id := cfg.NodeID
	if id == "" {
		b := make([]byte, 4)
		if _, err := rand.Read(b); err != nil {
			return "", err
		}
		id = "node-" + hex.EncodeToString(b)
	}
	if err := os.WriteFile(path, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("remember node id: %w", err)
	}
	return id, nil
}

// loadSealer loads the seal key. A bootstrapping node creates it; a
// joining node must be given the cluster's key.
func loadSealer(cfg config.Config) (*seal.Sealer, error) {
	if _, err := os.Stat(cfg.KeyFile); errors.Is(err, os.ErrNotExist) {
		if !cfg.Bootstrap() {
			return nil, fmt.Errorf("%w: --key-file %s does not exist; a joining node needs the cluster's seal key (copy it from the first node)", config.ErrInvalid, cfg.KeyFile)
		}
		if err := seal.GenerateKeyFile(cfg.KeyFile); err != nil {
			return nil, fmt.Errorf("create seal key: %w", err)
		}
	}
	return seal.LoadKey(cfg.KeyFile)
}

// revoked says whether a certificate serial is on the ledger's revocation
// list; the TLS handshake asks it (the ledger is there before serving).
func (s *Server) revoked(serial string) bool {
	return s.ledger != nil && s.ledger.Revoked(serial)
}

// transportCredentials returns the server's credentials and those it uses
// to call other coordinators. The embedded default makes its own PKI. A
// client certificate that revoked names is refused at the handshake.
func transportCredentials(cfg config.Config, revoked func(serial string) bool) (server, peer credentials.TransportCredentials, err error) {
	if cfg.Insecure {
		return insecure.NewCredentials(), insecure.NewCredentials(), nil
	}
	if cfg.TLSDir == filepath.Join(cfg.DataDir, "tls") {
		if err := tlsutil.InitPKI(cfg.TLSDir, tlsutil.Options{}); err != nil {
			return nil, nil, err
		}
	}
	tc, err := tlsutil.ServerConfig(cfg.TLSDir)
	if err != nil {
		return nil, nil, fmt.Errorf("--tls-dir %s: %w", cfg.TLSDir, err)
	}
	tc.VerifyPeerCertificate = refuseRevoked(revoked)
	server = credentials.NewTLS(tc)
	if peer, err = tlsutil.ClientCredentialsFromDir(cfg.TLSDir, tlsutil.RoleCoordinator); err != nil {
		return nil, nil, fmt.Errorf("--tls-dir %s: %w", cfg.TLSDir, err)
	}
	return server, peer, nil
}

// refuseRevoked is a TLS check refusing a client certificate that revoked
// names.
func refuseRevoked(revoked func(serial string) bool) func([][]byte, [][]*x509.Certificate) error {
	return func(_ [][]byte, chains [][]*x509.Certificate) error {
		if len(chains) > 0 && len(chains[0]) > 0 && revoked(tlsutil.SerialString(chains[0][0])) {
			return fmt.Errorf("certificate %s (serial %s) is revoked", chains[0][0].Subject.CommonName, tlsutil.SerialString(chains[0][0]))
		}
		return nil
	}
}

// ServiceInfo lists the services and methods the node serves.
func (s *Server) ServiceInfo() map[string]grpc.ServiceInfo { return s.grpc.GetServiceInfo() }
