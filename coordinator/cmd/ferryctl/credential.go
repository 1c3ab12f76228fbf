package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ferry-v2v/ferry/pkg/client"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

func (a *app) credentialCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "credential",
		Short: "Credentials: write-only secrets sources use",
		Long: `A credential is a secret: a password or an SSH private key. It is sealed
with AES-256-GCM before it enters the Raft log and is never returned; a get
shows a fingerprint (an HMAC keyed from the seal key) to tell credentials
apart. Only the agent of the host that runs a job or sync of a source using
it receives it, inside that assignment or source inventory request, over mutual TLS.

ferryctl never takes a secret as a flag value (it would land in shell
history and process lists): read it from standard input, a file or an
environment variable.`,
	}
	cmd.AddCommand(a.credentialCreate(), a.credentialGet(), a.credentialList(), a.credentialUpdate(), a.credentialDelete())
	return cmd
}

// secretFlags say where a credential's secret comes from.
type secretFlags struct {
	passwordStdin  bool
	privateKeyFile string
	secretEnv      string
}

func (a *app) credentialCreate() *cobra.Command {
	in := &ferryv1.Credential{}
	typ := newEnumFlag(ferryv1.CredentialType(0).Descriptor(), nil)
	var sf secretFlags
	var reqID string
	cmd := &cobra.Command{
		Use:   "create [ID] (--password-stdin | --private-key-file FILE | --secret-env VAR)",
		Short: "Create a credential from stdin, a key file or an environment variable",
		Long: `Create a credential. ID (lower-case letters, digits and '-') makes the name
credentials/ID; without it the coordinator picks one. The secret comes from
exactly one of:

  --password-stdin         standard input (a final newline is dropped)
  --private-key-file FILE  an SSH private key (the type becomes private-key)
  --secret-env VAR         the environment variable VAR

--type says what the secret is when it is not implied (default password).`,
		Example: `  ferryctl credential create vc-pass --password-stdin < vc.pass
  printf '%s' "$PASS" | ferryctl credential create kvm-pass --password-stdin
  ferryctl credential create kvm-key --private-key-file ~/.ssh/id_ed25519
  KVM_SASL=secret ferryctl credential create sasl --secret-env KVM_SASL`,
		Args: atMostOneArg("the credential ID"),
		RunE: a.run(func(ctx context.Context, cl *client.Client, args []string) error {
			secret, implied, err := a.readSecret(sf)
			if err != nil {
				return err
			}
			if len(args) == 1 {
				in.Name = resName("credentials", args[0])
			}
			in.Secret, in.Type = secret, ferryv1.CredentialType(typ.value)
			if in.Type == ferryv1.CredentialType_CREDENTIAL_TYPE_UNSPECIFIED {
				in.Type = implied
			}
			resp, err := cl.Sources().CreateCredential(ctx, &ferryv1.CreateCredentialRequest{Credential: in, RequestId: requestID(reqID)})
			if err != nil {
				return err
			}
			resp.Secret = "" // never echoed, whatever a server sends
			return a.show(resp, func() []field { return credentialDetails(resp) })
		}),
	}
	f := cmd.Flags()
	addEnumFlag(f, typ, "type", "what the secret is (default: password, or private-key with --private-key-file)")
	f.BoolVar(&sf.passwordStdin, "password-stdin", false, "read the secret from standard input")
	f.StringVar(&sf.privateKeyFile, "private-key-file", "", "read an SSH private key from FILE")
	f.StringVar(&sf.secretEnv, "secret-env", "", "read the secret from environment variable VAR")
	f.StringVar(&in.DisplayName, "display-name", "", "a name for people")
	addRequestIDFlag(cmd, &reqID)
	return cmd
}

// readSecret reads the secret from the one source the flags name, and
// returns the type that source implies.
func (a *app) readSecret(sf secretFlags) (string, ferryv1.CredentialType, error) {
	n := 0
	for _, set := range []bool{sf.passwordStdin, sf.privateKeyFile != "", sf.secretEnv != ""} {
		if set {
			n++
		}
	}
	if n != 1 {
		return "", 0, usagef("give exactly one of --password-stdin, --private-key-file and --secret-env")
	}
	password := ferryv1.CredentialType_CREDENTIAL_TYPE_PASSWORD
	switch {
	case sf.passwordStdin:
		if a.io.In == nil {
			return "", 0, fmt.Errorf("--password-stdin: no standard input")
		}
		b, err := io.ReadAll(io.LimitReader(a.io.In, 1<<20))
		if err != nil {
			return "", 0, fmt.Errorf("--password-stdin: %w", err)
		}
		s := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
		if s == "" {
			return "", 0, fmt.Errorf("--password-stdin: standard input is empty")
		}
		return s, password, nil
	case sf.privateKeyFile != "":
		b, err := os.ReadFile(sf.privateKeyFile)
		if err != nil {
			return "", 0, fmt.Errorf("--private-key-file: %w", err)
		}
		return string(b), ferryv1.CredentialType_CREDENTIAL_TYPE_PRIVATE_KEY, nil
	default:
		s := a.io.Getenv(sf.secretEnv)
		if s == "" {
			return "", 0, fmt.Errorf("--secret-env: %s is empty or not set", sf.secretEnv)
		}
		return s, password, nil
	}
}

func (a *app) credentialGet() *cobra.Command {
	return &cobra.Command{
		Use:     "get NAME",
		Short:   "Show a credential (its fingerprint, never the secret)",
		Long:    `Show one credential by name (credentials/ID or ID): type and fingerprint. The secret is write-only.`,
		Example: `  ferryctl credential get kvm-key`,
		Args:    exactlyOneArg("the credential's name"),
		RunE: a.run(func(ctx context.Context, cl *client.Client, args []string) error {
			resp, err := cl.Sources().GetCredential(ctx, &ferryv1.GetCredentialRequest{Name: resName("credentials", args[0])})
			if err != nil {
				return err
			}
			resp.Secret = ""
			return a.show(resp, func() []field { return credentialDetails(resp) })
		}),
	}
}

func (a *app) credentialList() *cobra.Command {
	var lf listFlags
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "List credentials",
		Long:    `List credentials with their types and fingerprints.`,
		Example: "  ferryctl credential list",
		Args:    noArgs,
		RunE: a.run(func(ctx context.Context, cl *client.Client, _ []string) error {
			all := &ferryv1.ListCredentialsResponse{}
			err := paginate(ctx, &lf, func(ctx context.Context, token string) (string, error) {
				r, err := cl.Sources().ListCredentials(ctx, &ferryv1.ListCredentialsRequest{PageSize: lf.pageSize, PageToken: token})
				all.Credentials, all.NextPageToken = append(all.Credentials, r.GetCredentials()...), r.GetNextPageToken()
				return r.GetNextPageToken(), err
			})
			if err != nil {
				return err
			}
			var rows [][]string
			for _, c := range all.GetCredentials() {
				c.Secret = ""
				rows = append(rows, []string{c.GetName(), c.GetDisplayName(), enumLower(c.GetType()), c.GetFingerprint(), age(c.GetCreateTime())})
			}
			return a.showList(all, []string{"NAME", "DISPLAY NAME", "TYPE", "FINGERPRINT", "AGE"}, rows, all.GetNextPageToken())
		}),
	}
	addListFlags(cmd, &lf)
	return cmd
}

func (a *app) credentialDelete() *cobra.Command {
	return &cobra.Command{
		Use:     "delete NAME",
		Short:   "Delete a credential",
		Long:    `Delete a credential. The coordinator refuses while a source names it.`,
		Example: `  ferryctl credential delete credentials/kvm-key`,
		Args:    exactlyOneArg("the credential's name"),
		RunE: a.run(func(ctx context.Context, cl *client.Client, args []string) error {
			name := resName("credentials", args[0])
			resp, err := cl.Sources().DeleteCredential(ctx, &ferryv1.DeleteCredentialRequest{Name: name})
			if err != nil {
				return err
			}
			return a.done(resp, "deleted "+name)
		}),
	}
}

func credentialDetails(c *ferryv1.Credential) []field {
	return []field{
		{"Name", c.GetName()},
		{"Display name", c.GetDisplayName()},
		{"Type", enumLower(c.GetType())},
		{"Fingerprint", c.GetFingerprint()},
		{"Created", when(c.GetCreateTime())},
		{"Updated", when(c.GetUpdateTime())},
	}
}
