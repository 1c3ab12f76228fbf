package vmdk

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error this package returns about its input wraps
// one of them; errors from the underlying reader or sink are passed on
// wrapped with context.
var (
	// ErrNotVMDK reports input that is not a VMDK at all: no sparse
	// extent magic, no disk descriptor.
	ErrNotVMDK = errors.New("vmdk: not a VMDK")
	// ErrUnsupported reports a valid VMDK this package does not read: a
	// delta disk with a parent, seSparse or vmfsSparse extents, raw device
	// mappings, a layout a stream cannot be read in.
	ErrUnsupported = errors.New("vmdk: unsupported")
	// ErrCorrupt reports a VMDK that breaks its own format. Errors that
	// wrap it are *CorruptError values that say where.
	ErrCorrupt = errors.New("vmdk: corrupt")
)

// CorruptError says where a VMDK breaks its format: Offset is the byte
// offset in the file (or stream) of the structure at fault.
type CorruptError struct {
	Offset int64
	Reason string
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("vmdk: corrupt at byte %d: %s", e.Offset, e.Reason)
}

// Unwrap makes errors.Is(err, ErrCorrupt) hold.
func (e *CorruptError) Unwrap() error { return ErrCorrupt }

func corruptf(off int64, format string, args ...any) error {
	return &CorruptError{Offset: off, Reason: fmt.Sprintf(format, args...)}
}

func unsupportedf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrUnsupported}, args...)...)
}
