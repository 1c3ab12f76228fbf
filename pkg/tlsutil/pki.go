// Package tlsutil provides the mutual TLS that Ferry runs on: a small
// self-contained PKI for one install (InitPKI) and the tls.Config and gRPC
// transport credentials that coordinators, agents and ferryctl build from it.
//
// A PKI directory holds:
//
//	ca.crt ca.key                   the install's certificate authority (ECDSA P-256)
//	coordinator.crt coordinator.key server and client certificate of every coordinator
//	agent.crt agent.key             client certificate of the agents
//	client.crt client.key           client certificate of operators (CN "ferryctl")
//
// Keys are written with mode 0600, certificates with 0644.
package tlsutil

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// File names inside a PKI directory.
const (
	CACertFile          = "ca.crt"
	CAKeyFile           = "ca.key"
	CoordinatorCertFile = "coordinator.crt"
	CoordinatorKeyFile  = "coordinator.key"
	AgentCertFile       = "agent.crt"
	AgentKeyFile        = "agent.key"
	ClientCertFile      = "client.crt"
	ClientKeyFile       = "client.key"
)

// Roles name the certificate pairs of a PKI directory; a role's files are
// ROLE.crt and ROLE.key.
const (
	RoleCoordinator = "coordinator"
	RoleAgent       = "agent"
	RoleClient      = "client"
)

// Common names of the certificates InitPKI issues.
const (
	CACommonName          = "Ferry CA"
	CoordinatorCommonName = "ferry-coordinator"
	AgentCommonName       = "ferry-agent"
	ClientCommonName      = "ferryctl"
)

const defaultValidity = 10 * 365 * 24 * time.Hour

// ErrInconsistentPKI reports a PKI directory that InitPKI cannot complete
// without overwriting something: a certificate without its key, or
// certificates whose CA key is gone.
var ErrInconsistentPKI = errors.New("tlsutil: inconsistent PKI directory")

// Options tunes InitPKI.
type Options struct {
	// Hosts are extra DNS names or IP addresses for the coordinator
	// certificate, on top of 127.0.0.1, ::1 and localhost.
	Hosts []string
	// Validity of the CA and the certificates; default ten years.
	Validity time.Duration
}

// InitPKI writes a CA and the coordinator, agent and operator certificates
// into dir, creating dir with mode 0700. It is idempotent: a pair whose
// certificate already exists is left alone, so running it twice does nothing
// and running it on a partial directory completes it with the existing CA.
func InitPKI(dir string, opts Options) error {
	if opts.Validity <= 0 {
		opts.Validity = defaultValidity
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("init pki %s: %w", dir, err)
	}
	leaves := []leafSpec{
		{RoleCoordinator, CoordinatorCommonName, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, true, Identity{RoleIDCoordinator, CoordinatorCommonName}},
		{RoleAgent, AgentCommonName, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, false, Identity{RoleIDAgent, AgentCommonName}},
		{RoleClient, ClientCommonName, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, false, Identity{RoleIDOperator, ClientCommonName}},
	}
	var missing []leafSpec
	for _, l := range leaves {
		ok, err := pairExists(dir, l.role)
		if err != nil {
			return err
		}
		if !ok {
			missing = append(missing, l)
		}
	}
	caOK, err := pairExists(dir, "ca")
	if err != nil {
		return err
	}
	if caOK && len(missing) == 0 {
		return nil
	}
	if !caOK && len(missing) < len(leaves) {
		return fmt.Errorf("init pki %s: certificates exist without %s: %w", dir, CACertFile, ErrInconsistentPKI)
	}
	ca, err := loadOrCreateCA(dir, caOK, opts.Validity)
	if err != nil {
		return fmt.Errorf("init pki %s: %w", dir, err)
	}
	for _, l := range missing {
		if err := ca.issue(dir, l, opts); err != nil {
			return fmt.Errorf("init pki %s: %s certificate: %w", dir, l.role, err)
		}
	}
	return nil
}

type leafSpec struct {
	role   string
	cn     string
	usage  []x509.ExtKeyUsage
	server bool
	id     Identity
}

type authority struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// pairExists reports whether ROLE.crt exists; a certificate without its key
// is an error, a key without its certificate counts as missing (an
// interrupted write) and is replaced.
func pairExists(dir, role string) (bool, error) {
	certPath := filepath.Join(dir, role+".crt")
	keyPath := filepath.Join(dir, role+".key")
	if _, err := os.Stat(certPath); errors.Is(err, fs.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("init pki: %w", err)
	}
	if _, err := os.Stat(keyPath); errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("init pki: %s exists without %s: %w", certPath, keyPath, ErrInconsistentPKI)
	} else if err != nil {
		return false, fmt.Errorf("init pki: %w", err)
	}
	return true, nil
}

func loadOrCreateCA(dir string, exists bool, validity time.Duration) (*authority, error) {
	if exists {
		return loadCA(dir)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl, err := template(CACommonName, validity)
	if err != nil {
		return nil, err
	}
	tmpl.IsCA = true
	tmpl.BasicConstraintsValid = true
	tmpl.MaxPathLenZero = true
	tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("create CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	if err := writePair(dir, "ca", der, key); err != nil {
		return nil, err
	}
	return &authority{cert: cert, key: key}, nil
}

func loadCA(dir string) (*authority, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, CACertFile))
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s: no PEM certificate", CACertFile)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", CACertFile, err)
	}
	block, _ = pem.Decode(keyPEM)
	if block == nil {
		return nil, fmt.Errorf("%s: no PEM key", CAKeyFile)
	}
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", CAKeyFile, err)
	}
	key, ok := parsed.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s: not an ECDSA key", CAKeyFile)
	}
	return &authority{cert: cert, key: key}, nil
}

func (ca *authority) issue(dir string, l leafSpec, opts Options) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl, err := template(l.cn, opts.Validity)
	if err != nil {
		return err
	}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.ExtKeyUsage = l.usage
	if l.server {
		tmpl.DNSNames, tmpl.IPAddresses = sans(opts.Hosts)
	}
	if l.id.Role != "" {
		tmpl.URIs = []*url.URL{l.id.URI()}
	}
	if tmpl.NotAfter.After(ca.cert.NotAfter) {
		tmpl.NotAfter = ca.cert.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return err
	}
	return writePair(dir, l.role, der, key)
}

// sans returns the coordinator's subject alternative names: the loopback
// names plus hosts, each parsed as an IP address when it is one.
func sans(hosts []string) ([]string, []net.IP) {
	dns := []string{"localhost"}
	ips := []net.IP{net.IPv4(127, 0, 0, 1).To4(), net.IPv6loopback}
	for _, h := range hosts {
		if h == "" {
			continue
		}
		if ip := net.ParseIP(h); ip != nil {
			if v4 := ip.To4(); v4 != nil {
				ip = v4
			}
			if !slices.ContainsFunc(ips, ip.Equal) {
				ips = append(ips, ip)
			}
			continue
		}
		if !slices.Contains(dns, h) {
			dns = append(dns, h)
		}
	}
	return dns, ips
}

func template(cn string, validity time.Duration) (*x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, err
	}
	now := time.Now()
	return &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"Ferry"}},
		NotBefore:    now.Add(-time.Hour), // tolerate clock skew between hosts
		NotAfter:     now.Add(validity),
	}, nil
}

// writePair writes the key first and the certificate last, each through a
// temporary file and a rename, so the certificate's presence means the pair
// is complete.
func writePair(dir, role string, certDER []byte, key *ecdsa.PrivateKey) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	if err := writeFileAtomic(filepath.Join(dir, role+".key"), keyPEM, 0o600); err != nil {
		return err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certDER})
	return writeFileAtomic(filepath.Join(dir, role+".crt"), certPEM, 0o644)
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
