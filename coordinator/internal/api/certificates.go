package api

import (
	"context"
	"math/big"
	"strings"

	"github.com/ferry-v2v/ferry/coordinator/internal/authz"
	"github.com/ferry-v2v/ferry/pkg/hostname"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

const (
	colRevoked = "revokedCertificates"
	// maxSerialDigits bounds a serial: RFC 5280 allows 20 octets.
	maxSerialDigits = 40
	maxRevokeReason = 256
)

// certificateService is ferry.v1.CertificateService: the revocation list.
type certificateService struct {
	ferryv1.UnimplementedCertificateServiceServer
	a *API
}

func (s *certificateService) RevokeCertificate(ctx context.Context, req *ferryv1.RevokeCertificateRequest) (*ferryv1.RevokeCertificateResponse, error) {
	rc, err := s.revoke(ctx, req)
	return reply(ctx, s.a, &ferryv1.RevokeCertificateResponse{RevokedCertificate: rc}, err)
}

func (s *certificateService) revoke(ctx context.Context, req *ferryv1.RevokeCertificateRequest) (*ferryv1.RevokedCertificate, error) {
	serial, err := normalSerial(req.GetSerial())
	if err != nil {
		return nil, err
	}
	c := &checker{}
	if err := hostname.ValidateText(req.GetReason(), maxRevokeReason); err != nil {
		c.add("reason", "%v", err)
	}
	checkRequestID(c, req.GetRequestId())
	if err := c.err(); err != nil {
		return nil, err
	}
	const method = "RevokeCertificate"
	target := colRevoked + "/" + serial
	if _, err := s.a.replayed(req.GetRequestId(), method, target); err != nil {
		return nil, err
	}
	// Revoking again is harmless: the entry already there is the answer,
	// with a request_id or without.
	if old, ok := s.a.ledger.RevokedCertificate(serial); ok {
		return old, nil
	}
	rc := &ferryv1.RevokedCertificate{Name: colRevoked + "/" + serial, Serial: serial, Reason: req.GetReason()}
	if caller, ok := authz.CallerFrom(ctx); ok {
		rc.RevokedBy = caller.Identity.String()
	}
	cmd := &ledgerv1.Command{Op: &ledgerv1.Command_RevokeCertificate{RevokeCertificate: &ledgerv1.RevokeCertificate{Certificate: rc}}}
	if _, err := s.a.propose(ctx, withRequest(cmd, req.GetRequestId(), method, target)); err != nil {
		return nil, err
	}
	out, _ := s.a.ledger.RevokedCertificate(serial)
	return out, nil
}

func (s *certificateService) ListRevokedCertificates(ctx context.Context, req *ferryv1.ListRevokedCertificatesRequest) (*ferryv1.ListRevokedCertificatesResponse, error) {
	page, next, err := paginate(s.a.ledger.RevokedCertificates(), req.GetPageSize(), req.GetPageToken())
	return reply(ctx, s.a, &ferryv1.ListRevokedCertificatesResponse{RevokedCertificates: page, NextPageToken: next}, err)
}

// normalSerial turns a serial as people copy it (upper case, colons,
// leading zeros) into the form certificates are checked against:
// lower-case hex without leading zeros (tlsutil.SerialString).
func normalSerial(in string) (string, error) {
	s := strings.ToLower(strings.ReplaceAll(strings.TrimSpace(in), ":", ""))
	switch {
	case s == "":
		return "", invalid("serial", "required: the certificate's serial number in hexadecimal")
	case len(s) > maxSerialDigits:
		return "", invalid("serial", "%d hex digits, at most %d", len(s), maxSerialDigits)
	}
	n, ok := new(big.Int).SetString(s, 16)
	if !ok || n.Sign() <= 0 {
		return "", invalid("serial", "%q is not a positive hexadecimal number", hostname.Quote(in))
	}
	return n.Text(16), nil
}
