package api

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferry-v2v/ferry/coordinator/internal/consensus"
	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	"github.com/ferry-v2v/ferry/pkg/grpcutil"
)

// violation is one bad field of a request.
type violation struct {
	field string
	desc  string
}

// invalidError is a request that failed validation. Its message starts
// with the first field path; every violation goes into the details.
type invalidError struct{ v []violation }

func (e *invalidError) Error() string {
	msg := e.v[0].field + ": " + e.v[0].desc
	if n := len(e.v) - 1; n > 0 {
		msg += fmt.Sprintf(" (and %d more; see the BadRequest details)", n)
	}
	return msg
}

// checker collects the violations of one request.
type checker struct{ v []violation }

// add records a violation. The values it quotes (%q) are clipped to
// maxQuoted bytes.
func (c *checker) add(field, format string, args ...any) {
	c.v = append(c.v, violation{field: field, desc: sprintfClipped(format, args...)})
}

// maxQuoted is the most of an offending value a refusal message repeats:
// a 4 KiB name comes back as its first 128 bytes and an ellipsis.
const maxQuoted = 128

// clip cuts s to maxQuoted bytes on a rune boundary, marking the cut.
func clip(s string) string {
	if len(s) <= maxQuoted {
		return s
	}
	cut := maxQuoted
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// sprintfClipped is fmt.Sprintf with every string quoted by %q clipped:
// what a message quotes is the offending value; what it prints with %s
// is Ferry's own text or a name that passed validation.
func sprintfClipped(format string, args ...any) string {
	out := append([]any(nil), args...)
	arg := 0
	for i := 0; i < len(format); i++ {
		if format[i] != '%' {
			continue
		}
		i++
		for i < len(format) && strings.IndexByte("+-# 0123456789.*", format[i]) >= 0 {
			if format[i] == '*' {
				arg++
			}
			i++
		}
		if i >= len(format) || format[i] == '%' {
			continue
		}
		if s, ok := argAt(out, arg).(string); ok && format[i] == 'q' {
			out[arg] = clip(s)
		}
		arg++
	}
	return fmt.Sprintf(format, out...)
}

func argAt(args []any, i int) any {
	if i < len(args) {
		return args[i]
	}
	return nil
}

func (c *checker) ok() bool { return len(c.v) == 0 }

func (c *checker) err() error {
	if len(c.v) == 0 {
		return nil
	}
	return &invalidError{v: c.v}
}

// invalid returns a one-field validation error.
func invalid(field, format string, args ...any) error {
	c := &checker{}
	c.add(field, format, args...)
	return c.err()
}

// fieldError is a refusal about one field that is not a syntax error: a
// reference to something that does not exist (NOT_FOUND) or a state that
// must change first (FAILED_PRECONDITION).
type fieldError struct {
	code  codes.Code
	field string
	msg   string
}

func (e *fieldError) Error() string { return e.field + ": " + e.msg }

// notFound says name (clipped; see maxQuoted) does not exist. Callers
// that describe the thing use notFoundf, which clips what it quotes.
func notFound(field, name string) error {
	return &fieldError{code: codes.NotFound, field: field, msg: clip(name) + " not found"}
}

// notFoundf is notFound with a described name, its values clipped.
func notFoundf(field, format string, args ...any) error {
	return &fieldError{code: codes.NotFound, field: field, msg: sprintfClipped(format, args...) + " not found"}
}

func precondition(field, format string, args ...any) error {
	return &fieldError{code: codes.FailedPrecondition, field: field, msg: sprintfClipped(format, args...)}
}

// toStatus is the one place errors become gRPC statuses.
func (a *API) toStatus(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	err = requestErrors(err)
	var inv *invalidError
	var fe *fieldError
	switch {
	case errors.As(err, &inv):
		return badRequest(inv)
	case errors.As(err, &fe):
		return status.Error(fe.code, fe.Error())
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
func badRequest(e *invalidError) error {
	st := status.New(codes.InvalidArgument, e.Error())
	br := &errdetails.BadRequest{}
	for _, v := range e.v {
		br.FieldViolations = append(br.FieldViolations, &errdetails.BadRequest_FieldViolation{Field: v.field, Description: v.desc})
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
