package api

import (
	"errors"
	"strings"

	"google.golang.org/grpc/codes"

	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
)

// A custom method that changes something takes a request_id (AIP-155).
// Its handler asks replayed first: a request_id the ledger recorded for
// the same method and target is answered from the ledger as it is now,
// without applying anything again; one recorded for another method or
// target is INVALID_ARGUMENT naming request_id. Otherwise the handler
// stamps the command with withRequest, and the ledger records the request
// when the command applies (and, should two copies race, answers the
// second from that record: see ledger.Apply).

// replayed says whether requestID was already used by method on target.
func (a *API) replayed(requestID, method, target string) (bool, error) {
	if requestID == "" {
		return false, nil
	}
	rec, ok := a.ledger.RequestRecord(requestID, a.clock())
	if !ok {
		return false, nil
	}
	if err := ledger.SameRequest(rec, method, target); err != nil {
		return false, requestIDError(err)
	}
	return true, nil
}

// withRequest stamps cmd with a custom method's request_id; without one
// it returns cmd as it is.
func withRequest(cmd *ledgerv1.Command, requestID, method, target string) *ledgerv1.Command {
	if requestID != "" {
		cmd.Request = &ledgerv1.RequestStamp{RequestId: requestID, Method: method, Target: target}
	}
	return cmd
}

// requestIDError is ledger.ErrRequestReused as INVALID_ARGUMENT naming
// request_id.
func requestIDError(err error) error {
	return invalid("request_id", "%s", strings.TrimPrefix(err.Error(), ledger.ErrRequestReused.Error()+": "))
}

// etagError is ledger.ErrAborted as ABORTED naming etag.
func etagError(field string, err error) error {
	return &fieldError{Code: codes.Aborted, Field: field, Msg: strings.TrimPrefix(err.Error(), ledger.ErrAborted.Error()+": ")}
}

// etagField names field in an ErrAborted; other errors pass.
func etagField(err error, field string) error {
	if errors.Is(err, ledger.ErrAborted) {
		return etagError(field, err)
	}
	return err
}

// requestErrors maps the two ledger refusals of this file, whether the
// leader's Refusal or the command's Apply returned them.
func requestErrors(err error) error {
	switch {
	case errors.Is(err, ledger.ErrRequestReused):
		return requestIDError(err)
	case errors.Is(err, ledger.ErrAborted):
		return etagError("etag", err)
	}
	return err
}
