package tlsutil

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
)

// IdentityScheme is the URI scheme of the subject alternative name that binds
// a certificate to a Ferry identity: ferry://ROLE/NAME.
const IdentityScheme = "ferry"

// Role is what a certificate may do in a Ferry install.
type Role string

// The roles a certificate can carry.
const (
	// RoleIDCoordinator is a coordinator node: Raft peer and server of the API.
	RoleIDCoordinator Role = "coordinator"
	// RoleIDAgent is the agent of one target host; its name is the host's.
	RoleIDAgent Role = "agent"
	// RoleIDOperator is a person or service that may read and change everything.
	RoleIDOperator Role = "operator"
	// RoleIDViewer may only read.
	RoleIDViewer Role = "viewer"
)

// Valid reports whether r is one of the four roles.
func (r Role) Valid() bool {
	switch r {
	case RoleIDCoordinator, RoleIDAgent, RoleIDOperator, RoleIDViewer:
		return true
	}
	return false
}

// Identity is the role and name a certificate is bound to.
type Identity struct {
	Role Role
	Name string
}

// String is the identity's URI, ferry://ROLE/NAME.
func (id Identity) String() string { return id.URI().String() }

// URI returns the subject alternative name that carries the identity.
func (id Identity) URI() *url.URL {
	return &url.URL{Scheme: IdentityScheme, Host: string(id.Role), Path: "/" + id.Name}
}

// ErrNoIdentity reports a certificate without exactly one valid
// ferry://ROLE/NAME subject alternative name.
var ErrNoIdentity = errors.New("tlsutil: certificate carries no Ferry identity")

// IdentityFromCert returns the identity a (verified) certificate is bound to:
// its one URI SAN ferry://ROLE/NAME with a known role and a non-empty name.
// A certificate with none, or with more than one, has no identity.
func IdentityFromCert(cert *x509.Certificate) (Identity, error) {
	var found []Identity
	for _, u := range cert.URIs {
		if u.Scheme != IdentityScheme {
			continue
		}
		id, err := identityFromURI(u)
		if err != nil {
			return Identity{}, err
		}
		found = append(found, id)
	}
	switch len(found) {
	case 0:
		return Identity{}, ErrNoIdentity
	case 1:
		return found[0], nil
	default:
		return Identity{}, fmt.Errorf("%w: %d identities", ErrNoIdentity, len(found))
	}
}

// ParseIdentity parses an identity URI, ferry://ROLE/NAME, as String
// writes it.
func ParseIdentity(s string) (Identity, error) {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != IdentityScheme {
		return Identity{}, fmt.Errorf("%w: malformed %q", ErrNoIdentity, s)
	}
	return identityFromURI(u)
}

func identityFromURI(u *url.URL) (Identity, error) {
	id := Identity{Role: Role(u.Host), Name: strings.TrimPrefix(u.Path, "/")}
	if !id.Role.Valid() || id.Name == "" || strings.Contains(id.Name, "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil || u.Opaque != "" {
		return Identity{}, fmt.Errorf("%w: malformed %q", ErrNoIdentity, u.String())
	}
	return id, nil
}

// SerialString is how Ferry writes a certificate's serial number: lower-case
// hexadecimal without leading zeros, as the revocation list keeps it.
func SerialString(cert *x509.Certificate) string { return cert.SerialNumber.Text(16) }

// ReadCertificate reads the first PEM certificate of a file.
func ReadCertificate(path string) (*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s: no PEM certificate", path)
	}
	return x509.ParseCertificate(block.Bytes)
}
