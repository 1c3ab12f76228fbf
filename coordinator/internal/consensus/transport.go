package consensus

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/raft"

	"github.com/ferry-v2v/ferry/pkg/tlsutil"
)

// ErrPeerUnverified means an address given for a new member did not answer
// as a coordinator: nothing listens there, or what does presents no
// certificate of the coordinator role signed by the cluster's CA.
var ErrPeerUnverified = errors.New("raft address does not answer as a coordinator")

// PeerError is ErrPeerUnverified for one address, with the cause.
type PeerError struct {
	Addr string
	Err  error
}

func (e *PeerError) Error() string {
	return fmt.Sprintf("%s: %s: %v", ErrPeerUnverified, e.Addr, e.Err)
}

// Is makes errors.Is(err, ErrPeerUnverified) hold.
func (e *PeerError) Is(target error) bool { return target == ErrPeerUnverified }

// Unwrap is the cause.
func (e *PeerError) Unwrap() error { return e.Err }

// probeTimeout bounds the check AddVoter makes of a new member's address.
const probeTimeout = 5 * time.Second

// alpnRaft is the application protocol both ends of a Raft connection
// negotiate. It keeps another TLS server holding a coordinator
// certificate (the coordinator's own gRPC API, say) from passing for a
// Raft peer.
const alpnRaft = "ferry-raft"

// PeerTLS is what Raft over mutual TLS needs: the coordinator's own
// certificate, presented both when it accepts and when it dials, and the
// cluster's CA. Both ends require the other's certificate to chain to the
// CA and to carry the identity ferry://coordinator/NAME.
//
// A dialling node does not match the peer's certificate against the host
// it dialled: Raft addresses are often IP addresses that an install's
// certificates need not name, and every coordinator may share one
// certificate. It verifies the chain against the CA itself and then the
// role, which is what a Raft peer has to prove.
type PeerTLS struct {
	Certificate tls.Certificate
	CA          *x509.CertPool
}

// serverConfig accepts only clients with a coordinator certificate.
func (p *PeerTLS) serverConfig() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{p.Certificate},
		ClientCAs:    p.CA,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		NextProtos:   []string{alpnRaft},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
				return errors.New("raft peer presented no verified certificate")
			}
			if cs.NegotiatedProtocol != alpnRaft {
				return fmt.Errorf("raft peer did not ask for protocol %s", alpnRaft)
			}
			return requireCoordinator(cs.VerifiedChains[0][0])
		},
	}
}

// clientConfig presents the coordinator certificate and accepts only a
// server whose certificate chains to the CA and carries the coordinator
// role, and that agrees to speak Raft (ALPN). Hostname verification is
// replaced by these checks (see PeerTLS).
func (p *PeerTLS) clientConfig() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{p.Certificate},
		NextProtos:   []string{alpnRaft},
		// The chain and the role are verified in VerifyConnection.
		InsecureSkipVerify: true, //nolint:gosec // verified below against the CA
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("raft peer presented no certificate")
			}
			if cs.NegotiatedProtocol != alpnRaft {
				return fmt.Errorf("peer does not speak %s (a coordinator's API port?)", alpnRaft)
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			leaf := cs.PeerCertificates[0]
			if _, err := leaf.Verify(x509.VerifyOptions{
				Roots: p.CA, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			}); err != nil {
				return fmt.Errorf("raft peer certificate: %w", err)
			}
			return requireCoordinator(leaf)
		},
	}
}

func requireCoordinator(cert *x509.Certificate) error {
	id, err := tlsutil.IdentityFromCert(cert)
	if err != nil {
		return fmt.Errorf("raft peer certificate: %w", err)
	}
	if id.Role != tlsutil.RoleIDCoordinator {
		return fmt.Errorf("raft peer certificate is %s, not a coordinator's", id)
	}
	return nil
}

// streamLayer carries Raft's NetworkTransport over TCP, with mutual TLS
// when tls is set.
type streamLayer struct {
	net.Listener
	advertise net.Addr
	server    *tls.Config // nil: plain TCP
	client    *tls.Config
}

func newStreamLayer(bind string, advertise net.Addr, peer *PeerTLS) (*streamLayer, error) {
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, err
	}
	s := &streamLayer{Listener: ln, advertise: advertise}
	if peer != nil {
		s.server, s.client = peer.serverConfig(), peer.clientConfig()
	}
	return s, nil
}

// Accept returns the next connection. With TLS its handshake runs on the
// transport's first read, in the connection's own goroutine; a peer that
// fails it is dropped before a byte of Raft is decoded.
func (s *streamLayer) Accept() (net.Conn, error) {
	c, err := s.Listener.Accept()
	if err != nil || s.server == nil {
		return c, err
	}
	return tls.Server(c, s.server), nil
}

// Addr is the advertised address when one is set.
func (s *streamLayer) Addr() net.Addr {
	if s.advertise != nil {
		return s.advertise
	}
	return s.Listener.Addr()
}

// Dial connects to a peer and, with TLS, completes the handshake (and so
// the peer's role check) before returning.
func (s *streamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return s.dial(ctx, string(addr))
}

func (s *streamLayer) dial(ctx context.Context, addr string) (net.Conn, error) {
	if s.client == nil {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
	d := &tls.Dialer{Config: s.client}
	return d.DialContext(ctx, "tcp", addr)
}

// probe checks that addr answers as a coordinator: a TCP connection and,
// with TLS, a handshake in which it presents a coordinator certificate.
func (s *streamLayer) probe(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	c, err := s.dial(ctx, addr)
	if err != nil {
		return &PeerError{Addr: addr, Err: err}
	}
	return c.Close()
}
