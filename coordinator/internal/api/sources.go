package api

import (
	"context"
	"crypto/sha1" //nolint:gosec // vSphere shows SHA-1 thumbprints
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/ferry-v2v/ferry/pkg/bundle"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

const (
	defaultVCenterPort     = 443
	defaultVCenterHTTPPort = 80
	defaultSSHPort         = 22
	defaultKVMUser         = "root"
	maxUser                = 256
)

// sourceService is ferry.v1.SourceService: sources and credentials.
type sourceService struct {
	ferryv1.UnimplementedSourceServiceServer
	a *API
}

func (s *sourceService) CreateSource(ctx context.Context, req *ferryv1.CreateSourceRequest) (*ferryv1.Source, error) {
	src, err := s.createSource(ctx, req)
	return reply(ctx, s.a, src, err)
}

func (s *sourceService) createSource(ctx context.Context, req *ferryv1.CreateSourceRequest) (*ferryv1.Source, error) {
	in := req.GetSource()
	if in == nil {
		return nil, invalid("source", "required")
	}
	if names, ok, err := s.a.firstRequest(req.GetRequestId(), colSources); err != nil || ok {
		return s.readSource(firstName(names), err)
	}
	c := &checker{}
	checkRequestID(c, req.GetRequestId())
	src := &ferryv1.Source{
		Name:        s.a.newName(c, "source.name", in.GetName(), colSources),
		DisplayName: in.GetDisplayName(),
		Type:        in.GetType(),
	}
	checkText(c, "source.display_name", src.DisplayName, maxDisplayName)
	checkEnum(c, "source.type", src.Type, true)
	switch src.Type {
	case ferryv1.Platform_PLATFORM_VMWARE:
		src.Vcenter = checkVCenter(c, in)
	case ferryv1.Platform_PLATFORM_KVM:
		src.Kvm = checkKVM(c, in)
	case ferryv1.Platform_PLATFORM_BUNDLE:
		src.Bundle = checkBundle(c, in)
	}
	if err := c.err(); err != nil {
		return nil, err
	}
	if err := s.checkCredentials(src); err != nil {
		return nil, err
	}
	cmd := &ledgerv1.Command{Op: &ledgerv1.Command_PutSource{PutSource: &ledgerv1.PutSource{Source: src, RequestId: req.GetRequestId()}}}
	name, err := s.a.createOne(ctx, req.GetRequestId(), colSources, cmd)
	if err == nil {
		s.a.kickSync() // the first sync, when an agent can reach the source
	}
	return s.readSource(name, err)
}

func checkVCenter(c *checker, in *ferryv1.Source) *ferryv1.VCenterConnection {
	if in.GetKvm() != nil {
		c.add("source.kvm", "a vmware source takes a vcenter connection, not a kvm one")
	}
	v := in.GetVcenter()
	if v == nil {
		c.add("source.vcenter", "required for a vmware source")
		return nil
	}
	out := &ferryv1.VCenterConnection{
		Address: v.GetAddress(), Port: v.GetPort(), User: v.GetUser(), Credential: v.GetCredential(),
		UseHttp: v.GetUseHttp(), CaCertificate: v.GetCaCertificate(), Thumbprint: v.GetThumbprint(),
	}
	checkHostname(c, "source.vcenter.address", out.Address)
	checkPort(c, "source.vcenter.port", out.Port)
	if out.Port == 0 {
		out.Port = defaultVCenterPort
		if out.UseHttp {
			out.Port = defaultVCenterHTTPPort
		}
	}
	if out.User == "" {
		c.add("source.vcenter.user", "required: the vCenter user, e.g. administrator@vsphere.local")
	}
	checkText(c, "source.vcenter.user", out.User, maxUser)
	checkRef(c, "source.vcenter.credential", out.Credential, colCreds)
	checkVCenterTLS(c, out, v.GetSkipHostnameCheck())
	return out
}

// checkVCenterTLS validates how the vCenter's certificate is checked: a
// CA bundle, a pinned thumbprint (normalised in out), or the system
// roots; skip_hostname_check keeps the chain or pin check. Plain HTTP
// takes none of them.
func checkVCenterTLS(c *checker, out *ferryv1.VCenterConnection, skipName bool) {
	out.SkipHostnameCheck = skipName
	if out.UseHttp {
		for _, f := range []struct {
			field string
			set   bool
		}{{"ca_certificate", out.CaCertificate != ""}, {"thumbprint", out.Thumbprint != ""}, {"skip_hostname_check", skipName}} {
			if f.set {
				c.add("source.vcenter."+f.field, "a TLS setting given with use_http; drop one of them")
			}
		}
		return
	}
	if out.CaCertificate != "" && out.Thumbprint != "" {
		c.add("source.vcenter.thumbprint", "give ca_certificate or thumbprint, not both")
	}
	if out.CaCertificate != "" {
		if err := checkPEMBundle(out.CaCertificate); err != nil {
			c.add("source.vcenter.ca_certificate", "%v", err)
		}
	}
	if out.Thumbprint != "" {
		tp, ok := normalThumbprint(out.Thumbprint)
		if !ok {
			c.add("source.vcenter.thumbprint", "%q is neither a SHA-1 (20 bytes) nor a SHA-256 (32 bytes) thumbprint in hex, colons optional", out.Thumbprint)
		}
		out.Thumbprint = tp
	}
}

// checkPEMBundle requires text to be one or more PEM CERTIFICATE blocks,
// each an X.509 certificate, and nothing else.
func checkPEMBundle(text string) error {
	rest := []byte(strings.TrimSpace(text))
	n := 0
	for len(rest) > 0 {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return fmt.Errorf("not a PEM CERTIFICATE bundle (text after certificate %d)", n)
		}
		n++
		if b.Type != "CERTIFICATE" {
			return fmt.Errorf("block %d is a %s, not a CERTIFICATE", n, b.Type)
		}
		if _, err := x509.ParseCertificate(b.Bytes); err != nil {
			return fmt.Errorf("certificate %d: %v", n, err)
		}
		rest = []byte(strings.TrimSpace(string(rest)))
	}
	if n == 0 {
		return errors.New("not a PEM CERTIFICATE bundle")
	}
	return nil
}

// normalThumbprint spells a SHA-1 or SHA-256 thumbprint as upper-case hex
// pairs joined by colons, as vSphere shows them.
func normalThumbprint(s string) (string, bool) {
	raw, err := hex.DecodeString(strings.NewReplacer(":", "", " ", "").Replace(strings.TrimSpace(s)))
	if err != nil || len(raw) != sha1.Size && len(raw) != sha256.Size {
		return s, false
	}
	pairs := make([]string, len(raw))
	for i, b := range raw {
		pairs[i] = strings.ToUpper(hex.EncodeToString([]byte{b}))
	}
	return strings.Join(pairs, ":"), true
}

// checkBundle validates a bundle source's location: an absolute, clean
// directory and, when given, the key its bundles must be signed with.
func checkBundle(c *checker, in *ferryv1.Source) *ferryv1.BundleLocation {
	if in.GetVcenter() != nil || in.GetKvm() != nil {
		c.add("source.bundle", "a bundle source takes a bundle location, not a vcenter or kvm connection")
	}
	b := in.GetBundle()
	if b == nil {
		c.add("source.bundle", "required for a bundle source")
		return nil
	}
	if !filepath.IsAbs(b.GetPath()) || filepath.Clean(b.GetPath()) != b.GetPath() {
		c.add("source.bundle.path", "%q is not a clean absolute directory of the migration servers that read it", b.GetPath())
	}
	if b.GetPublicKey() != "" {
		if _, err := bundle.DecodeKey(b.GetPublicKey()); err != nil {
			c.add("source.bundle.public_key", "%v: give the base64 Ed25519 key 'ferryctl bundle key' prints on the exporting cluster", err)
		}
	}
	return &ferryv1.BundleLocation{Path: b.GetPath(), PublicKey: b.GetPublicKey()}
}

func checkKVM(c *checker, in *ferryv1.Source) *ferryv1.KvmConnection {
	if in.GetVcenter() != nil {
		c.add("source.vcenter", "a kvm source takes a kvm connection, not a vcenter one")
	}
	k := in.GetKvm()
	if k == nil {
		c.add("source.kvm", "required for a kvm source")
		return nil
	}
	out := &ferryv1.KvmConnection{
		Address: k.GetAddress(), SshPort: k.GetSshPort(), User: k.GetUser(), Credential: k.GetCredential(),
		SaslUser: k.GetSaslUser(), SaslCredential: k.GetSaslCredential(), HostKey: k.GetHostKey(),
	}
	checkHostname(c, "source.kvm.address", out.Address)
	checkPort(c, "source.kvm.ssh_port", out.SshPort)
	if out.SshPort == 0 {
		out.SshPort = defaultSSHPort
	}
	if out.User == "" {
		out.User = defaultKVMUser
	}
	checkText(c, "source.kvm.user", out.User, maxUser)
	checkRef(c, "source.kvm.credential", out.Credential, colCreds)
	checkText(c, "source.kvm.sasl_user", out.SaslUser, maxUser)
	switch {
	case out.SaslUser != "" && out.SaslCredential == "":
		c.add("source.kvm.sasl_credential", "required with sasl_user: the credential holding the SASL password")
	case out.SaslUser == "" && out.SaslCredential != "":
		c.add("source.kvm.sasl_user", "required with sasl_credential")
	case out.SaslCredential != "":
		checkRef(c, "source.kvm.sasl_credential", out.SaslCredential, colCreds)
	}
	if out.HostKey != "" {
		if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(out.HostKey)); err != nil {
			c.add("source.kvm.host_key", "not an SSH public key in authorized_keys form (\"ssh-ed25519 AAAA...\")")
		}
	}
	return out
}

// checkCredentials requires every credential a source names to exist and
// to be of the type its use needs.
func (s *sourceService) checkCredentials(src *ferryv1.Source) error {
	type use struct {
		field, name  string
		passwordOnly bool
	}
	var uses []use
	if v := src.GetVcenter(); v != nil {
		uses = append(uses, use{"source.vcenter.credential", v.GetCredential(), true})
	}
	if k := src.GetKvm(); k != nil {
		uses = append(uses, use{"source.kvm.credential", k.GetCredential(), false})
		if k.GetSaslCredential() != "" {
			uses = append(uses, use{"source.kvm.sasl_credential", k.GetSaslCredential(), true})
		}
	}
	for _, u := range uses {
		cred, ok := s.a.ledger.Credential(u.name)
		if !ok {
			return notFound(u.field, u.name)
		}
		if u.passwordOnly && cred.GetCredential().GetType() != ferryv1.CredentialType_CREDENTIAL_TYPE_PASSWORD {
			return invalid(u.field, "%s is a %s; this connection needs a password", u.name, cred.GetCredential().GetType())
		}
	}
	return nil
}

func (s *sourceService) readSource(name string, err error) (*ferryv1.Source, error) {
	if err != nil {
		return nil, err
	}
	return lookup(s.a.ledger.Source, name, "source")
}

func (s *sourceService) GetSource(ctx context.Context, req *ferryv1.GetSourceRequest) (*ferryv1.Source, error) {
	src, err := get(s.a.ledger.Source, req.GetName(), colSources, "source")
	return reply(ctx, s.a, src, err)
}

func (s *sourceService) ListSources(ctx context.Context, req *ferryv1.ListSourcesRequest) (*ferryv1.ListSourcesResponse, error) {
	c := &checker{}
	checkEnum(c, "type", req.GetType(), false)
	if err := c.err(); err != nil {
		return reply[*ferryv1.ListSourcesResponse](ctx, s.a, nil, err)
	}
	page, next, err := paginate(s.a.ledger.Sources(req.GetType()), req.GetPageSize(), req.GetPageToken())
	return reply(ctx, s.a, &ferryv1.ListSourcesResponse{Sources: page, NextPageToken: next}, err)
}

func (s *sourceService) DeleteSource(ctx context.Context, req *ferryv1.DeleteSourceRequest) (*emptypb.Empty, error) {
	err := s.a.deleteResource(ctx, req.GetName(), colSources, func(d *ledgerv1.DeleteResource) *ledgerv1.Command {
		return &ledgerv1.Command{Op: &ledgerv1.Command_DeleteSource{DeleteSource: d}}
	})
	return reply(ctx, s.a, &emptypb.Empty{}, err)
}
