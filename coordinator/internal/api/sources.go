package api

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"encoding/pem"
	"strings"

	"golang.org/x/crypto/ssh"

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

func (s *sourceService) CreateSource(ctx context.Context, req *ferryv1.CreateSourceRequest) (*ferryv1.CreateSourceResponse, error) {
	src, err := s.createSource(ctx, req)
	return reply(ctx, s.a, &ferryv1.CreateSourceResponse{Source: src}, err)
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
	if out.CaCertificate != "" && out.Thumbprint != "" {
		c.add("source.vcenter.thumbprint", "give ca_certificate or thumbprint, not both")
	}
	if out.CaCertificate != "" {
		if b, _ := pem.Decode([]byte(out.CaCertificate)); b == nil || b.Type != "CERTIFICATE" {
			c.add("source.vcenter.ca_certificate", "not a PEM CERTIFICATE bundle")
		}
	}
	if out.Thumbprint != "" {
		tp, ok := normalThumbprint(out.Thumbprint)
		if !ok {
			c.add("source.vcenter.thumbprint", "%q is not a SHA-1 thumbprint (20 hex bytes, colons optional)", out.Thumbprint)
		}
		out.Thumbprint = tp
	}
	return out
}

// normalThumbprint spells a SHA-1 thumbprint as upper-case hex pairs
// joined by colons, the form govmomi expects.
func normalThumbprint(s string) (string, bool) {
	raw, err := hex.DecodeString(strings.ReplaceAll(s, ":", ""))
	if err != nil || len(raw) != sha1.Size {
		return s, false
	}
	pairs := make([]string, len(raw))
	for i, b := range raw {
		pairs[i] = strings.ToUpper(hex.EncodeToString([]byte{b}))
	}
	return strings.Join(pairs, ":"), true
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

func (s *sourceService) GetSource(ctx context.Context, req *ferryv1.GetSourceRequest) (*ferryv1.GetSourceResponse, error) {
	src, err := get(s.a.ledger.Source, req.GetName(), colSources, "source")
	return reply(ctx, s.a, &ferryv1.GetSourceResponse{Source: src}, err)
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

func (s *sourceService) DeleteSource(ctx context.Context, req *ferryv1.DeleteSourceRequest) (*ferryv1.DeleteSourceResponse, error) {
	err := s.a.deleteResource(ctx, req.GetName(), colSources, func(d *ledgerv1.DeleteResource) *ledgerv1.Command {
		return &ledgerv1.Command{Op: &ledgerv1.Command_DeleteSource{DeleteSource: d}}
	})
	return reply(ctx, s.a, &ferryv1.DeleteSourceResponse{}, err)
}
