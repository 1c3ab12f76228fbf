package server

import (
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// peerDialer keeps one client connection per other coordinator.
type peerDialer struct {
	creds credentials.TransportCredentials
	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

func newPeerDialer(creds credentials.TransportCredentials) *peerDialer {
	return &peerDialer{creds: creds, conns: map[string]*grpc.ClientConn{}}
}

// Dial returns the pooled connection to addr.
func (p *peerDialer) Dial(_ context.Context, addr string) (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.conns[addr]; ok {
		return c, nil
	}
	c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(p.creds))
	if err != nil {
		return nil, fmt.Errorf("dial coordinator %s: %w", addr, err)
	}
	p.conns[addr] = c
	return c, nil
}

func (p *peerDialer) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for addr, c := range p.conns {
		_ = c.Close()
		delete(p.conns, addr)
	}
}

// join asks the cluster, through any --join address, to add this node as
// a voter, and retries until it is in or ctx ends. Adding a member that is
// already in is a no-op, so a restarted node simply asks again.
func (s *Server) join(ctx context.Context) error {
	req := &ferryv1.AddVoterRequest{Id: s.cfg.NodeID, RaftAddress: s.node.RaftAddress(), ApiAddress: s.addr}
	for attempt := 0; ; attempt++ {
		addr := s.cfg.Join[attempt%len(s.cfg.Join)]
		err := s.askToJoin(ctx, addr, req)
		if err == nil {
			s.log.Info("joined the cluster", "via", addr)
			return nil
		}
		if attempt%10 == 0 {
			s.log.Warn("join failed; retrying", "via", addr, "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (s *Server) askToJoin(ctx context.Context, addr string, req *ferryv1.AddVoterRequest) error {
	conn, err := s.peers.Dial(ctx, addr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = ferryv1.NewMembershipServiceClient(conn).AddVoter(ctx, req)
	return err
}
