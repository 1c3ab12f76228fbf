package vmware

import (
	"context"
	"crypto/sha1" //nolint:gosec // vCenter and ESXi publish SHA-1 thumbprints.
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// ThumbprintError refuses a server whose certificate is not the pinned
// one: the certificate changed, or the address is not the server meant.
type ThumbprintError struct {
	Host      string
	Expected  string // as pinned (the old certificate's), normalised
	Presented string // the presented (new) certificate's, same algorithm
}

func (e *ThumbprintError) Error() string {
	return fmt.Sprintf("certificate of %s changed or is not the pinned one: expected %s, presented %s; "+
		"if the new certificate is trusted, update the source's thumbprint", e.Host, e.Expected, e.Presented)
}

// parseThumbprint decodes a SHA-1 (20 bytes) or SHA-256 (32 bytes) hex
// thumbprint, with or without colons.
func parseThumbprint(s string) ([]byte, error) {
	b, err := hex.DecodeString(strings.NewReplacer(":", "", " ", "").Replace(strings.TrimSpace(s)))
	if err != nil {
		return nil, fmt.Errorf("%q is not hex", s)
	}
	if len(b) != sha1.Size && len(b) != sha256.Size {
		return nil, fmt.Errorf("%q is %d bytes, neither SHA-1 (20) nor SHA-256 (32)", s, len(b))
	}
	return b, nil
}

// Thumbprint formats the thumbprint of cert in the algorithm of a pinned
// thumbprint of size bytes (sha1.Size or sha256.Size), as vSphere shows
// them: upper-case hex pairs joined by colons.
func Thumbprint(cert *x509.Certificate, size int) string {
	var sum []byte
	if size == sha1.Size {
		s := sha1.Sum(cert.Raw) //nolint:gosec // compared with a SHA-1 pin
		sum = s[:]
	} else {
		s := sha256.Sum256(cert.Raw)
		sum = s[:]
	}
	return colonHex(sum)
}

func colonHex(b []byte) string {
	parts := make([]string, len(b))
	for i, c := range b {
		parts[i] = fmt.Sprintf("%02X", c)
	}
	return strings.Join(parts, ":")
}

func certPool(pemText string) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(pemText)) {
		return nil, errors.New("no PEM certificate found")
	}
	return pool, nil
}

// trust checks server certificates: the policy of Config for the vCenter,
// and the thumbprints an NFC lease gives for the ESXi hosts serving disks.
type trust struct {
	roots    *x509.CertPool // nil: the system roots
	pin      []byte         // pinned thumbprint, when set
	skipName bool

	mu    sync.Mutex
	hosts map[string][]byte // host:port → thumbprint from a lease
}

func newTrust(cfg Config) (*trust, error) {
	t := &trust{skipName: cfg.SkipHostnameCheck, hosts: map[string][]byte{}}
	var err error
	if cfg.Thumbprint != "" {
		if t.pin, err = parseThumbprint(cfg.Thumbprint); err != nil {
			return nil, err
		}
	}
	if cfg.CACertificatePEM != "" {
		if t.roots, err = certPool(cfg.CACertificatePEM); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// pinHost trusts hostPort by the thumbprint an NFC lease gave for it.
func (t *trust) pinHost(hostPort, thumbprint string) error {
	b, err := parseThumbprint(thumbprint)
	if err != nil {
		return fmt.Errorf("thumbprint of %s from the lease: %w", hostPort, err)
	}
	t.mu.Lock()
	t.hosts[hostPort] = b
	t.mu.Unlock()
	return nil
}

// config is the TLS configuration for a connection to hostPort.
func (t *trust) config(hostPort string) *tls.Config {
	host, _, err := net.SplitHostPort(hostPort)
	if err != nil {
		host = hostPort
	}
	t.mu.Lock()
	pin := t.hosts[hostPort]
	t.mu.Unlock()
	if pin == nil {
		pin = t.pin
	}
	conf := &tls.Config{ServerName: host, RootCAs: t.roots, MinVersion: tls.VersionTLS12}
	switch {
	case pin != nil:
		conf.InsecureSkipVerify = true // replaced by the thumbprint check
		conf.VerifyConnection = func(cs tls.ConnectionState) error { return checkPin(hostPort, pin, cs) }
	case t.skipName:
		conf.InsecureSkipVerify = true // replaced by a chain check without the name
		conf.VerifyConnection = func(cs tls.ConnectionState) error { return checkChain(t.roots, cs) }
	}
	return conf
}

func checkPin(hostPort string, pin []byte, cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return fmt.Errorf("%s presented no certificate", hostPort)
	}
	presented := Thumbprint(cs.PeerCertificates[0], len(pin))
	if expected := colonHex(pin); presented != expected {
		return &ThumbprintError{Host: hostPort, Expected: expected, Presented: presented}
	}
	return nil
}

func checkChain(roots *x509.CertPool, cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("no certificate presented")
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter})
	return err
}

// configure makes tr open its connections from dialer and check TLS
// connections by t, without proxies.
func (t *trust) configure(tr *http.Transport, dialer ContextDialer) {
	tr.Proxy = nil
	tr.DialContext = dialer.DialContext
	tr.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		raw, err := dialer.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		conn := tls.Client(raw, t.config(addr))
		if err := conn.HandshakeContext(ctx); err != nil {
			raw.Close()
			return nil, err
		}
		return conn, nil
	}
	tr.MaxIdleConnsPerHost = 8
	tr.IdleConnTimeout = 90 * time.Second
	tr.TLSHandshakeTimeout = 30 * time.Second
}
