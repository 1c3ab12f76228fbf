package server

import (
	"fmt"

	"github.com/ferry-v2v/ferry/coordinator/internal/config"
	"github.com/ferry-v2v/ferry/coordinator/internal/consensus"
	"github.com/ferry-v2v/ferry/pkg/tlsutil"
)

// raftPeerTLS is the material of Raft over mutual TLS: the coordinator
// certificate and the CA of --tls-dir, the same the API serves with. It
// is nil under --insecure, which alone runs Raft over plain TCP.
func raftPeerTLS(cfg config.Config) (*consensus.PeerTLS, error) {
	if cfg.Insecure {
		return nil, nil
	}
	tc, err := tlsutil.ServerConfig(cfg.TLSDir)
	if err != nil {
		return nil, fmt.Errorf("--tls-dir %s: raft: %w", cfg.TLSDir, err)
	}
	return &consensus.PeerTLS{Certificate: tc.Certificates[0], CA: tc.ClientCAs}, nil
}
