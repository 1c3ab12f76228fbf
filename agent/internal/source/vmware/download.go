package vmware

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/vmware/govmomi/vim25/soap"

	"github.com/ferry-v2v/ferry/pkg/ratelimit"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
)

// Sink is a disk's cache image as the copy writes it: it reads as zeroes
// where nothing was written. Writes start on a multiple of cache.Granule and
// end on one or at the disk's end, as a compressed image needs.
type Sink interface {
	WriteAt(ctx context.Context, p []byte, off int64) error
	Flush(ctx context.Context) error
}

// flatChunk is how much of a flat disk is read and written at once.
const flatChunk = 32 * cache.Granule

// Formats a disk URL may serve, told apart by their first bytes.
const (
	formatSparse     = "sparse VMDK" // streamOptimized or monolithicSparse
	formatDescriptor = "VMDK descriptor"
	formatCOWD       = "vmfsSparse VMDK"
	formatRaw        = "raw"
)

// sniff tells what a disk URL serves from its first bytes.
func sniff(head []byte) string {
	switch {
	case bytes.HasPrefix(head, []byte("KDMV")):
		return formatSparse
	case bytes.HasPrefix(head, []byte("COWD")):
		return formatCOWD
	case bytes.HasPrefix(head, []byte("# Disk DescriptorFile")),
		bytes.Contains(head, []byte("createType=")) && !bytes.ContainsRune(head, 0):
		return formatDescriptor
	}
	return formatRaw
}

// download GETs u with the connection's transport: dialled from the
// migration CIDR, TLS checked as the connection's.
func (c *Conn) download(ctx context.Context, u *url.URL) (io.ReadCloser, error) {
	if c.resume != nil {
		return c.resume.open(ctx, u)
	}
	res, err := c.soap.DownloadRequest(ctx, u, &soap.Download{Method: http.MethodGet})
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", redactURL(u), err)
	}
	if res.StatusCode != http.StatusOK {
		res.Body.Close()
		return nil, fmt.Errorf("GET %s: %s", redactURL(u), res.Status)
	}
	return res.Body, nil
}

// redactURL drops the query, which may carry tickets.
func redactURL(u *url.URL) string {
	v := *u
	v.RawQuery, v.User = "", nil
	return v.String()
}

// limitedReader draws a token from the downstream limiter for every byte
// read, counts them, and keeps the transfer's error.
type limitedReader struct {
	ctx context.Context
	r   io.Reader
	lim *ratelimit.Limiter
	n   int64
	err error // the first read error but io.EOF
}

func (l *limitedReader) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	l.n += int64(n)
	if err != nil && err != io.EOF && l.err == nil {
		l.err = err
	}
	if n > 0 && l.lim != nil {
		if werr := l.lim.WaitN(l.ctx, n); werr != nil {
			return n, werr
		}
	}
	return n, err
}

// explain puts first the transfer's error behind a decoding error: a
// download cut short reads as a truncated VMDK to the decoder.
func (l *limitedReader) explain(err error) error {
	if err == nil || l.err == nil || l.ctx.Err() != nil {
		return err
	}
	return fmt.Errorf("%w: the download broke after %d bytes: %w (%v)", ErrExport, l.n, l.err, err)
}

// peek returns the first bytes of r, fewer when r is shorter.
func peek(r *bufio.Reader, n int) ([]byte, error) {
	head, err := r.Peek(n)
	if errors.Is(err, io.EOF) || errors.Is(err, bufio.ErrBufferFull) {
		err = nil
	}
	return head, err
}

// copyFlat writes length bytes of raw disk data read from r at base
// onwards; granules of zeroes are skipped. base must be a multiple of
// cache.Granule. progress gets the disk offset reached.
func copyFlat(ctx context.Context, r io.Reader, dst Sink, base, length int64, progress func(int64)) error {
	if base%cache.Granule != 0 {
		return fmt.Errorf("%w: a flat extent at byte %d is not on a %d-byte boundary", ErrExport, base, cache.Granule)
	}
	buf := make([]byte, flatChunk)
	for done := int64(0); done < length; {
		n, err := io.ReadFull(r, buf[:min(int64(len(buf)), length-done)])
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("%w: the flat disk data ended at byte %d of %d", ErrExport, done+int64(n), length)
			}
			return err
		}
		if err := writeData(ctx, dst, buf[:n], base+done); err != nil {
			return err
		}
		done += int64(n)
		if progress != nil {
			progress(base + done)
		}
	}
	return nil
}

// writeData writes the granules of p that hold data, merged into runs.
func writeData(ctx context.Context, dst Sink, p []byte, off int64) error {
	start := -1
	flush := func(end int) error {
		if start < 0 {
			return nil
		}
		err := dst.WriteAt(ctx, p[start:end], off+int64(start))
		start = -1
		return err
	}
	for i := 0; i < len(p); i += cache.Granule {
		g := p[i:min(i+cache.Granule, len(p))]
		if isZero(g) {
			if err := flush(i); err != nil {
				return err
			}
			continue
		}
		if start < 0 {
			start = i
		}
	}
	return flush(len(p))
}

var zeroes = make([]byte, cache.Granule)

func isZero(p []byte) bool {
	for len(p) > 0 {
		n := min(len(p), len(zeroes))
		if !bytes.Equal(p[:n], zeroes[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}
