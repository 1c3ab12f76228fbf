// Package validate checks the fields of ferry.v1 requests and builds the
// refusals they lead to: violations of the request's own fields (a
// *InvalidError, INVALID_ARGUMENT), references to what does not exist
// (NOT_FOUND) and states that must change first (FAILED_PRECONDITION),
// both a *FieldError. Package api is the one place that turns them into
// gRPC statuses; package admission and the API's handlers build them.
//
// Every refusal names the field it is about and repeats at most
// MaxQuoted bytes of an offending value.
package validate

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
)

// Violation is one bad field of a request.
type Violation struct {
	Field string
	Desc  string
}

// InvalidError is a request that failed validation. Its message starts
// with the first field path; every violation goes into the details.
type InvalidError struct{ Violations []Violation }

func (e *InvalidError) Error() string {
	msg := e.Violations[0].Field + ": " + e.Violations[0].Desc
	if n := len(e.Violations) - 1; n > 0 {
		msg += fmt.Sprintf(" (and %d more; see the BadRequest details)", n)
	}
	return msg
}

// Checker collects the violations of one request.
type Checker struct{ v []Violation }

// Add records a violation. The values it quotes (%q) are clipped to
// MaxQuoted bytes.
func (c *Checker) Add(field, format string, args ...any) {
	c.v = append(c.v, Violation{Field: field, Desc: Sprintf(format, args...)})
}

// Len is the number of violations so far.
func (c *Checker) Len() int { return len(c.v) }

// OK says whether nothing was refused so far.
func (c *Checker) OK() bool { return len(c.v) == 0 }

// Err is nil when nothing was refused, else an *InvalidError.
func (c *Checker) Err() error {
	if len(c.v) == 0 {
		return nil
	}
	return &InvalidError{Violations: c.v}
}

// Invalid returns a one-field validation error.
func Invalid(field, format string, args ...any) error {
	c := &Checker{}
	c.Add(field, format, args...)
	return c.Err()
}

// MaxQuoted is the most of an offending value a refusal message repeats:
// a 4 KiB name comes back as its first 128 bytes and an ellipsis.
const MaxQuoted = 128

// Clip cuts s to MaxQuoted bytes on a rune boundary, marking the cut.
func Clip(s string) string {
	if len(s) <= MaxQuoted {
		return s
	}
	cut := MaxQuoted
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// Sprintf is fmt.Sprintf with every string quoted by %q clipped: what a
// message quotes is the offending value; what it prints with %s is
// Ferry's own text or a name that passed validation.
func Sprintf(format string, args ...any) string {
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
			out[arg] = Clip(s)
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

// FieldError is a refusal about one field that is not a syntax error: a
// reference to something that does not exist (NOT_FOUND), something that
// exists already (ALREADY_EXISTS) or a state that must change first
// (FAILED_PRECONDITION).
type FieldError struct {
	Code  codes.Code
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

// NotFound says name (clipped; see MaxQuoted) does not exist. Callers
// that describe the thing use NotFoundf, which clips what it quotes.
func NotFound(field, name string) error {
	return &FieldError{Code: codes.NotFound, Field: field, Msg: Clip(name) + " not found"}
}

// NotFoundf is NotFound with a described name, its values clipped.
func NotFoundf(field, format string, args ...any) error {
	return &FieldError{Code: codes.NotFound, Field: field, Msg: Sprintf(format, args...) + " not found"}
}

// Precondition says what must change before field can be accepted.
func Precondition(field, format string, args ...any) error {
	return &FieldError{Code: codes.FailedPrecondition, Field: field, Msg: Sprintf(format, args...)}
}
