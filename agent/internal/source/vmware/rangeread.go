package vmware

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/soap"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
	"github.com/ferry-v2v/ferry/pkg/backoff"
	"github.com/ferry-v2v/ferry/pkg/ratelimit"
	"github.com/ferry-v2v/ferry/pkg/vmdk"
)

// A warm round reads the changed areas of a disk by offset, with HTTP
// Range requests on the datastore's file access (/folder/...), from the
// frozen base disk of the round's snapshot: its descriptor names flat
// extents (a VMFS or NFS datastore's base disks are flat), whose bytes
// are the disk's bytes. No proprietary library (VDDK) is needed; the
// snapshot keeps the base disk unchanged while it exists.

// diskExtent places bytes [start, start+length) of a disk at fileOff of
// the file at u; u is nil where the disk reads as zeroes.
type diskExtent struct {
	start, length, fileOff int64
	u                      *url.URL
}

// folderURL is the HTTP address of a datastore file (/folder/...).
func (c *Conn) folderURL(dcPath string, p object.DatastorePath) *url.URL {
	u := c.soap.URL()
	u.Path = "/folder/" + p.Path
	u.RawQuery = url.Values{"dcPath": {dcPath}, "dsName": {p.Datastore}}.Encode()
	return u
}

// flatLayout reads the descriptor of a disk's file (a datastore path)
// and maps the disk onto its extents' files. A disk that is not flat (a
// delta of another snapshot, a sparse disk) is refused: its bytes are not
// at fixed offsets of one file.
func (c *Conn) flatLayout(ctx context.Context, dcPath, file string, capacity int64) ([]diskExtent, error) {
	var dsPath object.DatastorePath
	if !dsPath.FromString(file) {
		return nil, fmt.Errorf("%w: disk file %q is not a datastore path", ErrExport, file)
	}
	body, err := c.getRange(ctx, c.folderURL(dcPath, dsPath), 0, maxDescriptor)
	if err != nil {
		return nil, fmt.Errorf("%w: read the descriptor %s: %w", ErrExport, file, err)
	}
	head, err := io.ReadAll(io.LimitReader(body, maxDescriptor))
	body.Close()
	if err != nil {
		return nil, fmt.Errorf("%w: read the descriptor %s: %w", ErrExport, file, err)
	}
	if f := sniff(head[:min(len(head), sniffLen)]); f != formatDescriptor {
		return nil, fmt.Errorf("%w: disk file %s is a %s; a warm copy reads flat disks by offset", ErrCBT, file, f)
	}
	desc, err := vmdk.ParseDescriptor(head)
	if err != nil {
		return nil, fmt.Errorf("descriptor %s: %w", file, err)
	}
	if desc.HasParent() {
		return nil, fmt.Errorf("%w: disk file %s is a delta of an older snapshot; remove the VM's own snapshots "+
			"before a warm migration", ErrCBT, file)
	}
	var out []diskExtent
	var start int64
	for _, e := range desc.Extents {
		n := e.Sectors * vmdk.SectorSize
		ext := diskExtent{start: start, length: n}
		switch e.Type {
		case "FLAT", "VMFS":
			p := dsPath
			p.Path = path.Join(path.Dir(dsPath.Path), e.File)
			ext.u, ext.fileOff = c.folderURL(dcPath, p), e.Offset*vmdk.SectorSize
		case "ZERO":
		default:
			return nil, fmt.Errorf("%w: disk file %s has a %s extent; a warm copy reads flat disks by offset", ErrCBT, file, e.Type)
		}
		out = append(out, ext)
		start += n
	}
	if start < capacity {
		return nil, fmt.Errorf("%w: the descriptor %s describes %d bytes where the disk has %d", ErrExport, file, start, capacity)
	}
	return out, nil
}

// getRange GETs bytes [from, to) of u. A server that answers the whole
// file instead is refused: a round must not read a whole disk for a
// change.
func (c *Conn) getRange(ctx context.Context, u *url.URL, from, to int64) (io.ReadCloser, error) {
	dl := &soap.Download{Method: http.MethodGet, Headers: map[string]string{
		"Range": "bytes=" + strconv.FormatInt(from, 10) + "-" + strconv.FormatInt(to-1, 10)}}
	res, err := c.soap.DownloadRequest(ctx, u, dl)
	if err != nil {
		return nil, fmt.Errorf("GET %s bytes %d-%d: %w", redactURL(u), from, to-1, err)
	}
	switch {
	case res.StatusCode == http.StatusPartialContent && rangeStarts(res.Header.Get("Content-Range"), from):
		return res.Body, nil
	case res.StatusCode == http.StatusOK:
		res.Body.Close()
		return nil, fmt.Errorf("%w: GET %s: the datastore does not serve byte ranges, which a warm copy needs",
			ErrExport, redactURL(u))
	}
	res.Body.Close()
	return nil, fmt.Errorf("GET %s bytes %d-%d: %s", redactURL(u), from, to-1, res.Status)
}

// areaSink receives what a round reads: data, and the granules that read
// as zeroes (which a round on an image holding an earlier round must
// write, and a first round on a new image may skip).
type areaSink interface {
	WriteAt(ctx context.Context, p []byte, off int64) error
	WriteZeroes(ctx context.Context, off, length int64) error
}

// areaReader reads changed areas of one disk through its flat layout,
// drawing on the downstream limiter, retrying a read whose connection
// broke from the granule it reached, for the retry budget.
type areaReader struct {
	conn    *Conn
	extents []diskExtent
	lim     *ratelimit.Limiter
	policy  backoff.Policy
	log     *slog.Logger
	read    atomic.Int64 // bytes read from the source, retries included
	retries atomic.Int64
}

// copyArea copies area a (granule-aligned, or ending at the disk's end)
// into dst; done gets the bytes of the area written so far.
func (r *areaReader) copyArea(ctx context.Context, a Area, dst areaSink, done func(int64)) error {
	for _, e := range r.extents {
		lo, hi := max(a.Offset, e.start), min(a.End(), e.start+e.length)
		if lo >= hi {
			continue
		}
		if e.u == nil {
			if err := dst.WriteZeroes(ctx, lo, hi-lo); err != nil {
				return err
			}
			done(hi - a.Offset)
			continue
		}
		if err := r.copyPiece(ctx, e, lo, hi, dst, func(pos int64) { done(pos - a.Offset) }); err != nil {
			return err
		}
	}
	return nil
}

// copyPiece copies disk bytes [lo, hi) of one flat extent.
func (r *areaReader) copyPiece(ctx context.Context, e diskExtent, lo, hi int64, dst areaSink, done func(int64)) error {
	pos := lo
	buf := make([]byte, flatChunk)
	_, err := backoff.Retry(ctx, r.policy, nil, backoff.Transport, func(ctx context.Context, attempt int, _ time.Time) error {
		if attempt > 1 {
			r.retries.Add(1)
			r.log.Info("reading a changed area again after the connection broke", "from_byte", pos, "to_byte", hi)
		}
		body, err := r.conn.getRange(ctx, e.u, e.fileOff+pos-e.start, e.fileOff+hi-e.start)
		if err != nil {
			return err
		}
		defer body.Close()
		lr := &limitedReader{ctx: ctx, r: body, lim: r.lim}
		defer func() { r.read.Add(lr.n) }()
		for pos < hi {
			n, err := io.ReadFull(lr, buf[:min(int64(len(buf)), hi-pos)])
			if pos+int64(n) < hi {
				n = n / cache.Granule * cache.Granule // whole granules only: the rest is read again
			}
			if n > 0 {
				if werr := writeRuns(ctx, dst, buf[:n], pos); werr != nil {
					return backoffFinal{werr}
				}
				pos += int64(n)
				done(pos)
			}
			if err != nil {
				if errors.Is(err, io.EOF) && pos < hi {
					err = io.ErrUnexpectedEOF
				}
				if pos >= hi {
					return nil
				}
				return fmt.Errorf("read disk bytes %d-%d: %w", pos, hi-1, lr.explain(err))
			}
		}
		return nil
	})
	var f backoffFinal
	if errors.As(err, &f) {
		return f.err
	}
	return err
}

// backoffFinal carries an error that must not be retried (a cache write)
// through backoff.Retry, whatever its kind.
type backoffFinal struct{ err error }

func (f backoffFinal) Error() string { return f.err.Error() }

// writeRuns writes the granules of p that hold data and zeroes the
// others, each merged into runs.
func writeRuns(ctx context.Context, dst areaSink, p []byte, off int64) error {
	start, zero := 0, false
	flush := func(end int) error {
		if end <= start {
			return nil
		}
		if zero {
			return dst.WriteZeroes(ctx, off+int64(start), int64(end-start))
		}
		return dst.WriteAt(ctx, p[start:end], off+int64(start))
	}
	for i := 0; i < len(p); i += cache.Granule {
		z := isZero(p[i:min(i+cache.Granule, len(p))])
		if i > start && z != zero {
			if err := flush(i); err != nil {
				return err
			}
			start = i
		}
		zero = z
	}
	return flush(len(p))
}
