// Package tlsutil provides the mutual TLS that Ferry runs on: a small
// self-contained PKI for one install (InitPKI, Issue) and the tls.Config and
// gRPC transport credentials that coordinators, agents and ferryctl build
// from it.
//
// A PKI root holds the certificate authority and one directory per
// certificate; each directory holds ca.crt and its own pair only, so it is
// what is copied to the machine that uses it:
//
//	ca.crt ca.key                     the install's CA (ECDSA P-256); keep ca.key on coordinators only
//	coordinator/  coordinator.crt .key server and client certificate of every coordinator
//	operator/     client.crt .key      the first operator (ferry://operator/ferryctl)
//	agents/HOST/  agent.crt .key       the agent of one host (ferry://agent/HOST)
//	operators/NAME/ viewers/NAME/      more operators and viewers (client.crt .key)
//	coordinators/NAME/                 more coordinator identities (coordinator.crt .key)
//
// Keys are written with mode 0600, certificates with 0644, directories 0700.
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

	"github.com/ferry-v2v/ferry/pkg/hostname"
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

// Directories of a PKI root (see the package comment).
const (
	CoordinatorDir = "coordinator"
	OperatorDir    = "operator"
	AgentsDir      = "agents"
)

// Common names of the certificates InitPKI issues.
const (
	CACommonName          = "Ferry CA"
	CoordinatorCommonName = "ferry-coordinator"
	ClientCommonName      = "ferryctl"
)

const defaultValidity = 10 * 365 * 24 * time.Hour

// ErrInconsistentPKI reports a PKI directory that InitPKI cannot complete
// without overwriting something: a certificate without its key, or
// certificates whose CA key is gone.
var ErrInconsistentPKI = errors.New("tlsutil: inconsistent PKI directory")

// ErrInvalidIdentity reports an identity Issue cannot put in a certificate.
var ErrInvalidIdentity = errors.New("tlsutil: invalid identity")

// Options tunes InitPKI and Issue.
type Options struct {
	// Hosts are extra DNS names or IP addresses for the coordinator
	// certificate, on top of 127.0.0.1, ::1 and localhost.
	Hosts []string
	// Agents are the host names InitPKI issues agent certificates for.
	Agents []string
	// Validity of the CA and the certificates; default ten years.
	Validity time.Duration
}

// DefaultCoordinator and DefaultOperator are the identities InitPKI issues.
var (
	DefaultCoordinator = Identity{Role: RoleIDCoordinator, Name: CoordinatorCommonName}
	DefaultOperator    = Identity{Role: RoleIDOperator, Name: ClientCommonName}
)

// IdentityDir is the directory, relative to a PKI root, that holds id's
// certificate: coordinator/ and operator/ for the two InitPKI issues,
// agents/HOST, operators/NAME, viewers/NAME, coordinators/NAME otherwise.
func IdentityDir(id Identity) string {
	switch {
	case id == DefaultCoordinator:
		return CoordinatorDir
	case id == DefaultOperator:
		return OperatorDir
	}
	return filepath.Join(string(id.Role)+"s", id.Name)
}

// PairName is the file name (without .crt or .key) of a role's pair.
func PairName(r Role) string {
	switch r {
	case RoleIDCoordinator:
		return RoleCoordinator
	case RoleIDAgent:
		return RoleAgent
	}
	return RoleClient
}

// InitPKI writes a CA into dir (creating it with mode 0700), the
// coordinator certificate into dir/coordinator, the first operator's into
// dir/operator and one agent certificate per Options.Agents host into
// dir/agents/HOST. It is idempotent: a pair whose certificate already exists
// is left alone, so running it twice does nothing and running it on a
// partial directory completes it with the existing CA.
func InitPKI(dir string, opts Options) error {
	ids := []Identity{DefaultCoordinator, DefaultOperator}
	for _, h := range opts.Agents {
		ids = append(ids, Identity{Role: RoleIDAgent, Name: h})
	}
	for _, id := range ids {
		if err := checkIdentity(id); err != nil {
			return fmt.Errorf("init pki %s: %w", dir, err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("init pki %s: %w", dir, err)
	}
	var missing []Identity
	for _, id := range ids {
		ok, err := pairExists(filepath.Join(dir, IdentityDir(id)), PairName(id.Role))
		if err != nil {
			return err
		}
		if !ok {
			missing = append(missing, id)
		}
	}
	caOK, err := pairExists(dir, "ca")
	if err != nil {
		return err
	}
	if caOK && len(missing) == 0 {
		return nil
	}
	if !caOK && len(missing) < len(ids) {
		return fmt.Errorf("init pki %s: certificates exist without %s: %w", dir, CACertFile, ErrInconsistentPKI)
	}
	ca, err := loadOrCreateCA(dir, caOK, validity(opts))
	if err != nil {
		return fmt.Errorf("init pki %s: %w", dir, err)
	}
	for _, id := range missing {
		if err := ca.issue(dir, id, opts); err != nil {
			return fmt.Errorf("init pki %s: %s certificate: %w", dir, id, err)
		}
	}
	return nil
}

// Issue signs one more certificate for id with the CA of the PKI root dir
// and writes it, with ca.crt, into dir/IdentityDir(id), which it returns.
// An identity whose certificate exists is left alone (created is false).
func Issue(dir string, id Identity, opts Options) (path string, created bool, err error) {
	if err := checkIdentity(id); err != nil {
		return "", false, err
	}
	path = filepath.Join(dir, IdentityDir(id))
	ok, err := pairExists(path, PairName(id.Role))
	if err != nil || ok {
		return path, false, err
	}
	ca, err := loadCA(dir)
	if err != nil {
		return "", false, fmt.Errorf("issue %s: CA of %s: %w", id, dir, err)
	}
	if err := ca.issue(dir, id, opts); err != nil {
		return "", false, fmt.Errorf("issue %s: %w", id, err)
	}
	return path, true, nil
}

// checkIdentity refuses what cannot name a certificate: an unknown role, a
// name that is not one path element, an agent name that is not a host name.
func checkIdentity(id Identity) error {
	if !id.Role.Valid() {
		return fmt.Errorf("%w: role %q is none of coordinator, agent, operator, viewer", ErrInvalidIdentity, id.Role)
	}
	if id.Role == RoleIDAgent {
		if err := hostname.Validate(id.Name); err != nil {
			return fmt.Errorf("%w: agent name: %v", ErrInvalidIdentity, err)
		}
		return nil
	}
	if err := hostname.ValidateText(id.Name, 128); err != nil || id.Name == "." || id.Name == ".." ||
		filepath.Base(id.Name) != id.Name || len(id.Name) == 0 {
		return fmt.Errorf("%w: name %q must be one printable path element of at most 128 bytes", ErrInvalidIdentity, id.Name)
	}
	return nil
}

func validity(opts Options) time.Duration {
	if opts.Validity <= 0 {
		return defaultValidity
	}
	return opts.Validity
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

func (ca *authority) issue(root string, id Identity, opts Options) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl, err := template(id.Name, validity(opts))
	if err != nil {
		return err
	}
	// The role in the subject too: qemu's TLS authorization of a volume
	// served to an agent matches the subject alone (DistinguishedName).
	tmpl.Subject.OrganizationalUnit = []string{string(id.Role)}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	if id.Role == RoleIDCoordinator {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
		tmpl.DNSNames, tmpl.IPAddresses = sans(opts.Hosts)
	}
	if id.Role == RoleIDAgent {
		// An agent also serves: the volumes of its host to the migration
		// server's agent over the migration network (qemu-nbd with TLS,
		// which checks that its own certificate may serve). Clients check
		// an agent by its identity, not by a host name.
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	tmpl.URIs = []*url.URL{id.URI()}
	if tmpl.NotAfter.After(ca.cert.NotAfter) {
		tmpl.NotAfter = ca.cert.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return err
	}
	dir := filepath.Join(root, IdentityDir(id))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})
	if err := writeFileAtomic(filepath.Join(dir, CACertFile), caPEM, 0o644); err != nil {
		return err
	}
	return writePair(dir, PairName(id.Role), der, key)
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
