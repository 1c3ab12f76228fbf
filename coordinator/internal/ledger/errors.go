package ledger

import "errors"

// Sentinel errors; the API layer alone turns them into gRPC codes.
var (
	// ErrNotFound: the named resource does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExists: a resource with that name exists already.
	ErrExists = errors.New("already exists")
	// ErrFailedPrecondition: the resource is not in a state that allows the
	// change; the message says what to do first.
	ErrFailedPrecondition = errors.New("failed precondition")
	// ErrStaleEpoch: a report from an assignment that was superseded.
	ErrStaleEpoch = errors.New("stale fencing epoch")
	// ErrRequestReused: a request_id seen before, for another method or
	// resource.
	ErrRequestReused = errors.New("request_id reused")
	// ErrAborted: an update's etag no longer matches the stored resource.
	ErrAborted = errors.New("aborted")
)
