package tlsutil

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// ErrNoCertificates reports a CA file without any PEM certificate.
var ErrNoCertificates = errors.New("tlsutil: no certificates in CA file")

// ServerConfig returns the coordinator's TLS configuration from a PKI
// directory: it presents coordinator.crt and requires every client to present
// a certificate signed by ca.crt (mutual TLS).
func ServerConfig(dir string) (*tls.Config, error) {
	dir = ResolveDir(dir, RoleCoordinator)
	return ServerConfigFiles(filepath.Join(dir, CACertFile), filepath.Join(dir, CoordinatorCertFile), filepath.Join(dir, CoordinatorKeyFile))
}

// ClientConfig returns a client TLS configuration that trusts the CA in
// caFile and presents the certificate in certFile and keyFile. The server
// name is left empty: gRPC fills it from the dialled address, which the
// coordinator certificate carries as a subject alternative name.
func ClientConfig(caFile, certFile, keyFile string) (*tls.Config, error) {
	pool, err := loadPool(caFile)
	if err != nil {
		return nil, err
	}
	cert, err := loadPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
	}, nil
}

// ClientConfigFromDir is ClientConfig for a role's pair in a PKI directory:
// RoleClient for ferryctl, RoleAgent for agents, RoleCoordinator for one
// coordinator calling another.
func ClientConfigFromDir(dir, role string) (*tls.Config, error) {
	dir = ResolveDir(dir, role)
	return ClientConfig(filepath.Join(dir, CACertFile), filepath.Join(dir, role+".crt"), filepath.Join(dir, role+".key"))
}

// ResolveDir returns the directory holding role's pair: dir itself when it
// has ROLE.crt, else the role's directory under dir as a PKI root
// (coordinator/ for RoleCoordinator, operator/ for RoleClient), else dir.
// So --tls-dir may name a PKI root or the one directory a machine carries.
func ResolveDir(dir, role string) string {
	if _, err := os.Stat(filepath.Join(dir, role+".crt")); err == nil {
		return dir
	}
	sub := map[string]string{RoleCoordinator: CoordinatorDir, RoleClient: OperatorDir}[role]
	if sub == "" {
		return dir
	}
	if _, err := os.Stat(filepath.Join(dir, sub, role+".crt")); err == nil {
		return filepath.Join(dir, sub)
	}
	return dir
}

// ServerCredentials returns gRPC transport credentials for the coordinator
// (see ServerConfig).
func ServerCredentials(dir string) (credentials.TransportCredentials, error) {
	cfg, err := ServerConfig(dir)
	if err != nil {
		return nil, err
	}
	return credentials.NewTLS(cfg), nil
}

// ClientCredentials returns gRPC transport credentials for a client (see
// ClientConfig).
func ClientCredentials(caFile, certFile, keyFile string) (credentials.TransportCredentials, error) {
	cfg, err := ClientConfig(caFile, certFile, keyFile)
	if err != nil {
		return nil, err
	}
	return credentials.NewTLS(cfg), nil
}

// ClientCredentialsFromDir returns gRPC transport credentials for a role's
// pair in a PKI directory (see ClientConfigFromDir).
func ClientCredentialsFromDir(dir, role string) (credentials.TransportCredentials, error) {
	cfg, err := ClientConfigFromDir(dir, role)
	if err != nil {
		return nil, err
	}
	return credentials.NewTLS(cfg), nil
}

// PeerCommonName returns the common name of the verified client certificate
// of the gRPC call in ctx ("ferry-agent", "ferryctl", "ferry-coordinator"
// for a PKI from InitPKI), and false when the call has none.
func PeerCommonName(ctx context.Context) (string, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok || p.AuthInfo == nil {
		return "", false
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return "", false
	}
	return info.State.VerifiedChains[0][0].Subject.CommonName, true
}

func loadPool(caFile string) (*x509.CertPool, error) {
	pemData, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemData) {
		return nil, fmt.Errorf("load CA %s: %w", caFile, ErrNoCertificates)
	}
	return pool, nil
}

func loadPair(certFile, keyFile string) (tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("load certificate %s: %w", certFile, err)
	}
	return cert, nil
}

// ServerConfigFiles is a server configuration presenting certFile and
// keyFile that requires a client certificate signed by caFile: an agent's
// own pair serving its /metrics, say.
func ServerConfigFiles(caFile, certFile, keyFile string) (*tls.Config, error) {
	pool, err := loadPool(caFile)
	if err != nil {
		return nil, err
	}
	cert, err := loadPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	}, nil
}
