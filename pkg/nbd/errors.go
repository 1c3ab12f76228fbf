package nbd

import (
	"errors"
	"fmt"
)

// Sentinel errors. Test with errors.Is.
var (
	// ErrClosed is returned by calls on a client that Close has shut down.
	ErrClosed = errors.New("nbd: client closed")
	// ErrConnection wraps the cause when the connection to the server fails;
	// every request in flight at that moment fails with it.
	ErrConnection = errors.New("nbd: connection failed")
	// ErrUnsupported means the server did not offer what the call needs: a
	// command, a flag, an option or a handshake style.
	ErrUnsupported = errors.New("nbd: not supported by the server")
	// ErrUnknownExport means the server has no export of the requested name.
	ErrUnknownExport = errors.New("nbd: unknown export")
	// ErrTLSRequired means the server will not go on without TLS, which this
	// client does not speak.
	ErrTLSRequired = errors.New("nbd: server requires TLS")
	// ErrProtocol means the server broke the protocol.
	ErrProtocol = errors.New("nbd: protocol violation")
	// ErrReadOnly means a write, trim or write-zeroes on a read-only export.
	ErrReadOnly = errors.New("nbd: export is read-only")
	// ErrOutOfRange means a request reaches outside the export.
	ErrOutOfRange = errors.New("nbd: request outside the export")
	// ErrUnaligned means a request is not aligned to the server's minimum
	// block size.
	ErrUnaligned = errors.New("nbd: request not aligned to the minimum block size")
)

// Errno values a server reports in replies.
const (
	EPERM     = 1
	EIO       = 5
	ENOMEM    = 12
	EINVAL    = 22
	ENOSPC    = 28
	EOVERFLOW = 75
	ENOTSUP   = 95
	ESHUTDOWN = 108
)

var errnoNames = map[uint32]string{
	EPERM:     "EPERM",
	EIO:       "EIO",
	ENOMEM:    "ENOMEM",
	EINVAL:    "EINVAL",
	ENOSPC:    "ENOSPC",
	EOVERFLOW: "EOVERFLOW",
	ENOTSUP:   "ENOTSUP",
	ESHUTDOWN: "ESHUTDOWN",
}

// ErrnoName returns the protocol's name for an errno value, such as "EIO".
// Values the protocol does not define are shown as numbers; the spec says to
// treat them as EINVAL.
func ErrnoName(errno uint32) string {
	if n, ok := errnoNames[errno]; ok {
		return n
	}
	return fmt.Sprintf("errno %d", errno)
}

// Error is an error the server reported for one request. Other requests on
// the same connection are not affected by it.
type Error struct {
	Op     string // "read", "write", "trim", …
	Offset int64  // start of the request, or where the server said it failed
	Length int64  // length of the request
	Errno  uint32 // as sent by the server; see the E* constants
	Msg    string // the server's message, when it sent one
}

func (e *Error) Error() string {
	s := fmt.Sprintf("nbd %s at %d+%d: %s", e.Op, e.Offset, e.Length, ErrnoName(e.Errno))
	if e.Msg != "" {
		s += ": " + e.Msg
	}
	return s
}

// Is makes ENOTSUP match ErrUnsupported, which is what a fast-zero request
// that the server cannot do quickly returns.
func (e *Error) Is(target error) bool {
	return target == ErrUnsupported && e.Errno == ENOTSUP
}

// OptionError is a server's refusal of an option during the handshake.
type OptionError struct {
	Option uint32 // the option sent, e.g. 7 for NBD_OPT_GO
	Reply  uint32 // the NBD_REP_ERR_* value
	Msg    string // the server's message, when it sent one
}

func (e *OptionError) Error() string {
	name, ok := repErrNames[e.Reply]
	if !ok {
		name = fmt.Sprintf("error reply %#x", e.Reply)
	}
	s := fmt.Sprintf("server refused %s: %s", optName(e.Option), name)
	if e.Msg != "" {
		s += ": " + e.Msg
	}
	return s
}

// Is maps the refusals callers act on to sentinels.
func (e *OptionError) Is(target error) bool {
	switch e.Reply {
	case repErrUnsup:
		return target == ErrUnsupported
	case repErrUnknown:
		return target == ErrUnknownExport
	case repErrTLSReqd:
		return target == ErrTLSRequired
	}
	return false
}

func optName(opt uint32) string {
	if n, ok := optNames[opt]; ok {
		return n
	}
	return fmt.Sprintf("option %d", opt)
}

func cmdName(cmd uint16) string {
	if n, ok := cmdNames[cmd]; ok {
		return n
	}
	return fmt.Sprintf("command %d", cmd)
}

func protocolErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrProtocol}, args...)...)
}
