package api

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/ssh"
	"google.golang.org/protobuf/types/known/emptypb"

	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

const maxSecret = 64 << 10

// Credentials are write-only: the secret is sealed with the credential's
// name as additional data before it is proposed, and no answer or log line
// ever carries it. Requests are never logged, so neither is the secret.

func (s *sourceService) CreateCredential(ctx context.Context, req *ferryv1.CreateCredentialRequest) (*ferryv1.Credential, error) {
	cred, err := s.createCredential(ctx, req)
	return reply(ctx, s.a, cred, err)
}

func (s *sourceService) createCredential(ctx context.Context, req *ferryv1.CreateCredentialRequest) (*ferryv1.Credential, error) {
	in := req.GetCredential()
	if in == nil {
		return nil, invalid("credential", "required")
	}
	if names, ok, err := s.a.firstRequest(req.GetRequestId(), colCreds); err != nil || ok {
		return s.readCredential(firstName(names), err)
	}
	c := &checker{}
	checkRequestID(c, req.GetRequestId())
	cred := &ferryv1.Credential{
		Name:        s.a.newName(c, "credential.name", in.GetName(), colCreds),
		DisplayName: in.GetDisplayName(),
		Type:        in.GetType(),
	}
	checkText(c, "credential.display_name", cred.DisplayName, maxDisplayName)
	checkEnum(c, "credential.type", cred.Type, true)
	checkSecret(c, cred.Type, in.GetSecret())
	if err := c.err(); err != nil {
		return nil, err
	}
	cred.Fingerprint = s.a.sealer.Fingerprint([]byte(in.GetSecret()))
	sealed, err := s.a.sealer.Seal([]byte(in.GetSecret()), []byte(cred.Name))
	if err != nil {
		return nil, fmt.Errorf("seal credential %s: %w", cred.Name, err)
	}
	cmd := &ledgerv1.Command{Op: &ledgerv1.Command_PutCredential{PutCredential: &ledgerv1.PutCredential{
		Credential: &ledgerv1.SealedCredential{Credential: cred, SealedSecret: sealed},
		RequestId:  req.GetRequestId(),
	}}}
	name, err := s.a.createOne(ctx, req.GetRequestId(), colCreds, cmd)
	return s.readCredential(name, err)
}

// checkSecret checks a secret without ever quoting it.
func checkSecret(c *checker, typ ferryv1.CredentialType, secret string) {
	switch {
	case secret == "":
		c.add("credential.secret", "required: the password or private key")
		return
	case len(secret) > maxSecret:
		c.add("credential.secret", "at most %d bytes, got %d", maxSecret, len(secret))
		return
	case strings.IndexByte(secret, 0) >= 0:
		// No password prompt or key file carries one; a NUL would cut the
		// secret short wherever it meets a C string (libvirt, ssh).
		c.add("credential.secret", "must not contain a NUL byte")
		return
	}
	if typ != ferryv1.CredentialType_CREDENTIAL_TYPE_PRIVATE_KEY {
		return
	}
	_, err := ssh.ParseRawPrivateKey([]byte(secret))
	var missing *ssh.PassphraseMissingError
	switch {
	case errors.As(err, &missing):
		c.add("credential.secret", "the private key is encrypted; give it without a passphrase (it is sealed at rest)")
	case err != nil:
		c.add("credential.secret", "not a private key in PEM or OpenSSH form")
	}
}

// readCredential returns a credential without its secret.
func (s *sourceService) readCredential(name string, err error) (*ferryv1.Credential, error) {
	if err != nil {
		return nil, err
	}
	sc, err := lookup(s.a.ledger.Credential, name, "credential")
	if err != nil {
		return nil, err
	}
	return publicCredential(sc), nil
}

func publicCredential(sc *ledgerv1.SealedCredential) *ferryv1.Credential {
	c := sc.GetCredential()
	c.Secret = ""
	return withETag(c)
}

func (s *sourceService) GetCredential(ctx context.Context, req *ferryv1.GetCredentialRequest) (*ferryv1.Credential, error) {
	err := checkName(req.GetName(), colCreds)
	cred, err := s.readCredential(req.GetName(), err)
	return reply(ctx, s.a, cred, err)
}

func (s *sourceService) ListCredentials(ctx context.Context, req *ferryv1.ListCredentialsRequest) (*ferryv1.ListCredentialsResponse, error) {
	all := s.a.ledger.Credentials()
	creds := make([]*ferryv1.Credential, len(all))
	for i, sc := range all {
		creds[i] = publicCredential(sc)
	}
	page, next, err := paginate(creds, req.GetPageSize(), req.GetPageToken())
	return reply(ctx, s.a, &ferryv1.ListCredentialsResponse{Credentials: page, NextPageToken: next}, err)
}

func (s *sourceService) DeleteCredential(ctx context.Context, req *ferryv1.DeleteCredentialRequest) (*emptypb.Empty, error) {
	err := s.a.deleteResource(ctx, req.GetName(), colCreds, func(d *ledgerv1.DeleteResource) *ledgerv1.Command {
		return &ledgerv1.Command{Op: &ledgerv1.Command_DeleteCredential{DeleteCredential: d}}
	})
	return reply(ctx, s.a, &emptypb.Empty{}, err)
}
