package api

import (
	"context"
	"errors"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferry-v2v/ferry/coordinator/internal/consensus"
	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	"github.com/ferry-v2v/ferry/coordinator/internal/validate"
	"github.com/ferry-v2v/ferry/pkg/grpcutil"
)

// checker is validate.Checker under the short names the handlers use.
type checker struct{ validate.Checker }

func (c *checker) add(field, format string, args ...any) { c.Add(field, format, args...) }
func (c *checker) ok() bool                              { return c.OK() }
func (c *checker) err() error                            { return c.Err() }

// fieldError is a refusal about one field (validate.FieldError).
type fieldError = validate.FieldError

// The refusals of package validate, under the handlers' names.
var (
	invalid      = validate.Invalid
	notFound     = validate.NotFound
	notFoundf    = validate.NotFoundf
	precondition = validate.Precondition
)

// toStatus is the one place errors become gRPC statuses.
func (a *API) toStatus(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	err = requestErrors(err)
	var inv *validate.InvalidError
	var fe *fieldError
	switch {
	case errors.As(err, &inv):
		return badRequest(inv)
	case errors.As(err, &fe):
		return status.Error(fe.Code, fe.Error())
	case errors.Is(err, consensus.ErrNotLeader):
		return grpcutil.NotLeaderError(a.proposer.LeaderAPIAddress())
	case errors.Is(err, consensus.ErrLeadershipLost):
		return status.Error(codes.Unavailable, "leadership changed while the request was in flight; its outcome is unknown: retry it (with the same request_id for a create)")
	case errors.Is(err, consensus.ErrShutdown):
		return status.Error(codes.Unavailable, "this coordinator is shutting down; try another one")
	case errors.Is(err, consensus.ErrTimeout):
		return status.Error(codes.Unavailable, "the cluster did not take the request in time; retry it")
	case errors.Is(err, ledger.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, ledger.ErrExists):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, ledger.ErrFailedPrecondition):
		return status.Error(codes.FailedPrecondition, strings.TrimPrefix(err.Error(), ledger.ErrFailedPrecondition.Error()+": "))
	case errors.Is(err, ledger.ErrStaleEpoch):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	}
	method, _ := grpc.Method(ctx)
	a.log.Error("internal error", "method", method, "err", err)
	return status.Error(codes.Internal, "internal error: "+err.Error())
}

// badRequest is INVALID_ARGUMENT with an errdetails.BadRequest listing
// every violation.
func badRequest(e *validate.InvalidError) error {
	st := status.New(codes.InvalidArgument, e.Error())
	br := &errdetails.BadRequest{}
	for _, v := range e.Violations {
		br.FieldViolations = append(br.FieldViolations, &errdetails.BadRequest_FieldViolation{Field: v.Field, Description: v.Desc})
	}
	if withDetails, err := st.WithDetails(br); err == nil {
		return withDetails.Err()
	}
	return st.Err()
}

// reply maps err through toStatus; every handler returns through it.
func reply[T any](ctx context.Context, a *API, resp T, err error) (T, error) {
	if err != nil {
		var zero T
		return zero, a.toStatus(ctx, err)
	}
	return resp, nil
}
