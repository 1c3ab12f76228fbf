package tlsutil

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"path/filepath"
)

// PeerClientConfig is the TLS configuration of an agent connecting to
// another agent (a volume served over the migration network): it presents
// the agent's pair from dir and accepts only a server certificate signed
// by dir's CA that carries the identity peer. Agents are checked by
// identity, not by host name: the migration network's addresses are in no
// certificate.
func PeerClientConfig(dir string, peer Identity) (*tls.Config, error) {
	cfg, err := ClientConfigFromDir(dir, RoleAgent)
	if err != nil {
		return nil, err
	}
	roots := cfg.RootCAs
	// The chain and the identity are checked in VerifyConnection below,
	// instead of against a host name.
	cfg.InsecureSkipVerify = true
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		return verifyPeer(cs, roots, peer)
	}
	return cfg, nil
}

// ErrWrongPeer reports a certificate of another identity than the one
// expected.
var ErrWrongPeer = errors.New("tlsutil: the peer is not the one expected")

func verifyPeer(cs tls.ConnectionState, roots *x509.CertPool, peer Identity) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("tlsutil: the peer presented no certificate")
	}
	leaf := cs.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return fmt.Errorf("tlsutil: verify %s: %w", peer, err)
	}
	id, err := IdentityFromCert(leaf)
	if err != nil {
		return fmt.Errorf("tlsutil: verify %s: %w", peer, err)
	}
	if id != peer {
		return fmt.Errorf("%w: %s, want %s", ErrWrongPeer, id, peer)
	}
	return nil
}

// QEMUCredsFiles maps the files of a qemu tls-creds-x509 directory
// (endpoint=server) to an agent's files in its PKI directory dir.
func QEMUCredsFiles(dir string) map[string]string {
	return map[string]string{
		"ca-cert.pem":     filepath.Join(dir, CACertFile),
		"server-cert.pem": filepath.Join(dir, RoleAgent+".crt"),
		"server-key.pem":  filepath.Join(dir, RoleAgent+".key"),
	}
}

// DistinguishedName is the subject of id's certificates as GnuTLS (and so
// qemu) prints it, in the certificate's order: what qemu's authz objects
// match a TLS client against. It carries the role, so an operator's certificate
// named like a host is not that host's agent; certificates issued before
// the role was in the subject match nothing.
func DistinguishedName(id Identity) string {
	return "O=Ferry,OU=" + string(id.Role) + ",CN=" + id.Name
}
