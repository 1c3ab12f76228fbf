package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/ferry-v2v/ferry/pkg/client"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

func (a *app) certCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cert",
		Short: "The certificate revocation list",
		Long: `Every certificate of an install carries one identity, ferry://ROLE/NAME
(roles coordinator, agent, operator, viewer), and the coordinators authorize
every call from its role. Certificates are issued on a coordinator with
"ferry-coordinator tls init" and "ferry-coordinator tls issue", which print
their serial numbers ("openssl x509 -noout -serial -in FILE" shows one too).

A revoked certificate is refused by every coordinator from its next call on,
new connections fail their TLS handshake, and its open streams end within
seconds (an agent's session included). A revocation cannot be undone: issue
a new certificate. Revoking needs the operator role; viewers may list.`,
	}
	cmd.AddCommand(a.certRevoke(), a.certList())
	return cmd
}

func (a *app) certRevoke() *cobra.Command {
	var reason, reqID string
	cmd := &cobra.Command{
		Use:   "revoke SERIAL",
		Short: "Revoke a certificate by serial number",
		Long: `Put a certificate on the revocation list by its serial number, in
hexadecimal (upper or lower case, with or without colons). Revoking a serial
that is already listed changes nothing.`,
		Example: `  ferryctl cert revoke 5f3a9c01d2e4b6a8 --reason "kvm-7 decommissioned"
  ferryctl cert revoke 5F:3A:9C:01:D2:E4:B6:A8`,
		Args: exactlyOneArg("the certificate's serial number"),
		RunE: a.run(func(ctx context.Context, cl *client.Client, args []string) error {
			resp, err := cl.Certificates().RevokeCertificate(ctx, &ferryv1.RevokeCertificateRequest{Serial: args[0], Reason: reason,
				RequestId: requestID(reqID)})
			if err != nil {
				return err
			}
			return a.show(resp, func() []field { return revokedDetails(resp.GetRevokedCertificate()) })
		}),
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why, for the record (at most 256 characters)")
	addRequestIDFlag(cmd, &reqID)
	return cmd
}

func (a *app) certList() *cobra.Command {
	var lf listFlags
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "List revoked certificates",
		Long:    `List the revocation list: serial, who revoked it, when and why.`,
		Example: "  ferryctl cert list\n  ferryctl cert list -o yaml",
		Args:    noArgs,
		RunE: a.run(func(ctx context.Context, cl *client.Client, _ []string) error {
			all := &ferryv1.ListRevokedCertificatesResponse{}
			err := paginate(ctx, &lf, func(ctx context.Context, token string) (string, error) {
				r, err := cl.Certificates().ListRevokedCertificates(ctx, &ferryv1.ListRevokedCertificatesRequest{PageSize: lf.pageSize, PageToken: token})
				all.RevokedCertificates, all.NextPageToken = append(all.RevokedCertificates, r.GetRevokedCertificates()...), r.GetNextPageToken()
				return r.GetNextPageToken(), err
			})
			if err != nil {
				return err
			}
			var rows [][]string
			for _, c := range all.GetRevokedCertificates() {
				rows = append(rows, []string{c.GetSerial(), c.GetRevokedBy(), age(c.GetRevokeTime()), c.GetReason()})
			}
			return a.showList(all, []string{"SERIAL", "REVOKED BY", "AGE", "REASON"}, rows, all.GetNextPageToken())
		}),
	}
	addListFlags(cmd, &lf)
	return cmd
}

func revokedDetails(c *ferryv1.RevokedCertificate) []field {
	return []field{
		{"Name", c.GetName()},
		{"Serial", c.GetSerial()},
		{"Revoked by", c.GetRevokedBy()},
		{"Revoked", when(c.GetRevokeTime())},
		{"Reason", c.GetReason()},
	}
}
