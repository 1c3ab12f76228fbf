package vmware

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/ferry-v2v/ferry/agent/internal/runner"
	"github.com/ferry-v2v/ferry/pkg/backoff"
)

// Defaults of the retry options.
const (
	DefaultRetryBudget     = 5 * time.Minute
	DefaultRetryBackoffMin = time.Second
	DefaultRetryBackoffMax = 15 * time.Second
)

// ErrSourceLost reports a source whose connection dropped and could not
// be opened again within the retry budget.
var ErrSourceLost = errors.New("source connection lost")

// resumeOverlap is how much of a disk's stream is read again after a
// reconnect and compared with what was read before it: a stream that
// changed (a server generating it anew differently) is not spliced.
const resumeOverlap = 64 << 10

// connectAttempt bounds one attempt to log in again: at least
// minConnectAttempt, at most maxConnectAttempt, within the budget.
const (
	minConnectAttempt = 5 * time.Second
	maxConnectAttempt = 30 * time.Second
)

// policy is the backoff of the driver's reconnects.
func (o Options) policy() backoff.Policy {
	p := backoff.Policy{Budget: o.RetryBudget, Min: o.RetryBackoffMin, Max: o.RetryBackoffMax}
	if p.Budget == 0 {
		p.Budget = DefaultRetryBudget
	}
	if p.Min <= 0 {
		p.Min = DefaultRetryBackoffMin
	}
	if p.Max < p.Min {
		p.Max = max(DefaultRetryBackoffMax, p.Min)
	}
	return p
}

// redial logs in to the job's source again with backoff for the retry
// budget, while the attempts fail with transport errors. check, when not
// nil, runs on each new connection; its error ends the retries unless it
// is a transport error itself.
func (d *Driver) redial(ctx context.Context, job *runner.Job, cause error, check func(context.Context, *Conn) error) (*Conn, int, error) {
	p := d.opts.policy()
	if p.Budget < 0 {
		return nil, 0, fmt.Errorf("%w (no retries): %w", ErrSourceLost, cause)
	}
	a := job.Assignment
	var conn *Conn
	attempts, err := backoff.Retry(ctx, p, job.Log, backoff.Transport, func(ctx context.Context, _ int, deadline time.Time) error {
		actx, cancel := context.WithTimeout(ctx, max(min(time.Until(deadline), maxConnectAttempt), minConnectAttempt))
		defer cancel()
		c, err := d.connect(actx, a.GetSource(), a.GetMigrationServer(), a.GetSecrets(), job.Log)
		if err != nil {
			return err
		}
		if check != nil {
			if err := check(actx, c); err != nil {
				c.Close()
				return err
			}
		}
		conn = c
		return nil
	})
	switch {
	case err == nil:
		return conn, attempts, nil
	case ctx.Err() != nil, errors.Is(err, ErrPoweredOn):
		return nil, attempts, err
	case !backoff.Transport(err):
		// The source answered and refused: a login, a snapshot, a lease.
		return nil, attempts, fmt.Errorf("the connection to the source broke (%v) and reconnecting failed: %w", cause, err)
	}
	return nil, attempts, fmt.Errorf("%w and not back within the retry budget of %s: %w (the connection broke with: %v)",
		ErrSourceLost, p.Budget, err, cause)
}

// exportSource is a job's export: the connection, the lease and its disk
// URLs, all replaced together when the connection drops. Downloads
// through it resume where they broke, on the new lease.
type exportSource struct {
	d    *Driver
	job  *runner.Job
	vm   *VM
	name string // of the snapshot

	mu    sync.Mutex // held across a reconnect: downloads that broke wait for it
	gen   int        // counts reconnects
	conn  *Conn
	exp   *Export
	urls  map[string]*url.URL // disk URLs of the current lease, by disk
	disks map[string]string   // disk of every lease URL handed out, by URL
	lost  error               // set once the budget was spent: nothing resumes
	// released tells exp was already aborted by a reconnect that then
	// failed to take a new export.
	released bool
	// dcPath is the VM's datacenter path, for datastore file URLs.
	dcPath string

	reread atomic.Int64 // bytes read again to resume
}

// startExport takes the job's first export on conn.
func (d *Driver) startExport(ctx context.Context, conn *Conn, job *runner.Job, vm *VM, name string) (*exportSource, error) {
	s := &exportSource{d: d, job: job, vm: vm, name: name, conn: conn, disks: map[string]string{}}
	dcPath, err := conn.datacenterPath(ctx, vm)
	if err != nil {
		return nil, err
	}
	s.dcPath = dcPath
	exp, urls, err := s.export(ctx, conn)
	if err != nil {
		return nil, err
	}
	s.exp, s.urls = exp, urls
	conn.resume = s
	return s, nil
}

// export snapshots the VM and opens a lease on conn.
func (s *exportSource) export(ctx context.Context, conn *Conn) (*Export, map[string]*url.URL, error) {
	exp, err := conn.StartExport(ctx, s.vm, s.name, s.job.Log)
	if err != nil {
		return nil, nil, err
	}
	urls, err := exp.DiskURLs(s.vm.Disks)
	if err != nil {
		exp.Release(err)
		return nil, nil, err
	}
	for disk, u := range urls {
		s.disks[u.String()] = disk
	}
	return exp, urls, nil
}

// url is the current lease's URL of disk.
func (s *exportSource) url(disk string) *url.URL {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.urls[disk]
}

// current returns the connection, lease and generation in use.
func (s *exportSource) current() (*Conn, *Export, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conn, s.exp, s.gen
}

// mapURL turns a URL handed out earlier into the current one: a lease's
// disk URL into the current lease's URL of the disk; any other (a
// datastore file) stays. Called with mu held.
func (s *exportSource) mapURL(u *url.URL) *url.URL {
	if disk, ok := s.disks[u.String()]; ok && s.urls[disk] != nil {
		return s.urls[disk]
	}
	return u
}

// reconnect logs in again, checks the VM is still off, aborts the old
// lease through its own session (the source answers again) and takes a
// new export. Called with mu held.
func (s *exportSource) reconnect(ctx context.Context, cause error) error {
	log := s.job.Log
	log.Warn("the connection to the source dropped during the export; reconnecting",
		"err", cause, "retry_budget", s.d.opts.policy().Budget)
	oldReleased := false
	var exp *Export
	var urls map[string]*url.URL
	conn, attempts, err := s.d.redial(ctx, s.job, cause, func(actx context.Context, c *Conn) error {
		if err := c.checkOff(actx, s.vm); err != nil {
			return err
		}
		if !oldReleased {
			s.exp.Release(fmt.Errorf("the connection to the source dropped (%v); a new export replaces this one", cause))
			oldReleased, s.released = true, true
		}
		// The snapshot and lease of a large VM may take longer than a
		// login attempt is given: the job's context bounds them.
		var err error
		exp, urls, err = s.export(ctx, c)
		return err
	})
	if err != nil {
		return err
	}
	s.conn.Close()
	s.conn, s.exp, s.urls, s.released = conn, exp, urls, false
	s.gen++
	log.Info("reconnected to the source; the copy resumes on a new export lease",
		"attempts", attempts, "lease", exp.lease.Value)
	return nil
}

// checkOff fails with ErrPoweredOn when vm is powered on.
func (c *Conn) checkOff(ctx context.Context, vm *VM) error {
	state, err := object.NewVirtualMachine(c.vim, vm.Ref).PowerState(ctx)
	if err != nil {
		return fmt.Errorf("power state of %s: %w", vm.Name, err)
	}
	if state == types.VirtualMachinePowerStatePoweredOn {
		return fmt.Errorf("%w (%s, seen when reconnecting)", ErrPoweredOn, vm.Name)
	}
	return nil
}

// open GETs u and returns its body, which resumes after a dropped
// connection.
func (s *exportSource) open(ctx context.Context, u *url.URL) (io.ReadCloser, error) {
	s.mu.Lock()
	conn, gen, cur := s.conn, s.gen, s.mapURL(u)
	s.mu.Unlock()
	b := &resumingBody{ctx: ctx, src: s, u: u, gen: gen}
	body, _, err := conn.getFrom(ctx, cur, 0)
	if err != nil {
		if !backoff.Transport(err) || ctx.Err() != nil {
			return nil, err
		}
		if err := b.resume(err); err != nil {
			return nil, err
		}
		return b, nil
	}
	b.body = body
	return b, nil
}

// reopen returns u's body from byte from on, after reconnecting unless a
// download that broke earlier already did since gen.
func (s *exportSource) reopen(ctx context.Context, gen int, u *url.URL, from int64, cause error) (io.ReadCloser, int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		if s.lost != nil {
			return nil, 0, s.lost
		}
		if gen == s.gen {
			if err := s.reconnect(ctx, cause); err != nil {
				if ctx.Err() == nil {
					s.lost = err
				}
				return nil, 0, err
			}
		}
		gen = s.gen
		body, ranged, err := s.conn.getFrom(ctx, s.mapURL(u), from)
		if err != nil {
			if backoff.Transport(err) && ctx.Err() == nil {
				cause = err
				continue // dropped again: reconnect again
			}
			return nil, 0, err
		}
		if !ranged && from > 0 {
			s.job.Log.Warn("the source does not serve byte ranges: reading the disk again up to where it broke",
				"url", redactURL(u), "bytes", from)
			if _, err := io.CopyN(io.Discard, body, from); err != nil {
				body.Close()
				if backoff.Transport(err) && ctx.Err() == nil {
					cause = err
					continue
				}
				return nil, 0, fmt.Errorf("%w: skip to byte %d of the disk again: %w", ErrExport, from, err)
			}
			s.reread.Add(from)
		}
		return body, gen, nil
	}
}

// getFrom GETs u from byte from on, asking for a range when from > 0;
// ranged tells the server honoured it.
func (c *Conn) getFrom(ctx context.Context, u *url.URL, from int64) (io.ReadCloser, bool, error) {
	dl := &soap.Download{Method: http.MethodGet}
	if from > 0 {
		dl.Headers = map[string]string{"Range": "bytes=" + strconv.FormatInt(from, 10) + "-"}
	}
	res, err := c.soap.DownloadRequest(ctx, u, dl)
	if err != nil {
		return nil, false, fmt.Errorf("GET %s: %w", redactURL(u), err)
	}
	switch {
	case res.StatusCode == http.StatusOK:
		return res.Body, false, nil
	case res.StatusCode == http.StatusPartialContent && from > 0 && rangeStarts(res.Header.Get("Content-Range"), from):
		return res.Body, true, nil
	}
	res.Body.Close()
	return nil, false, fmt.Errorf("GET %s from byte %d: %s", redactURL(u), from, res.Status)
}

// rangeStarts reports whether a Content-Range header, when there is one,
// starts at from.
func rangeStarts(h string, from int64) bool {
	if h == "" {
		return true
	}
	rest, ok := strings.CutPrefix(h, "bytes ")
	if !ok {
		return false
	}
	start, _, _ := strings.Cut(rest, "-")
	n, err := strconv.ParseInt(start, 10, 64)
	return err == nil && n == from
}

// resumingBody is a download that, when its connection drops, reopens
// the same disk on the export that replaced the broken one and goes on
// from the byte it reached, so the decoder reading it never notices.
type resumingBody struct {
	ctx  context.Context
	src  *exportSource
	u    *url.URL
	gen  int
	body io.ReadCloser
	off  int64  // bytes handed out
	tail []byte // the last bytes handed out, up to resumeOverlap
	err  error  // a transport error met after handing out bytes
}

func (b *resumingBody) Read(p []byte) (int, error) {
	for {
		if b.err != nil {
			cause := b.err
			b.err = nil
			if err := b.resume(cause); err != nil {
				return 0, err
			}
		}
		n, err := b.body.Read(p)
		b.keep(p[:n])
		if err == nil || err == io.EOF || b.ctx.Err() != nil || !backoff.Transport(err) {
			return n, err
		}
		b.err = err
		if n > 0 {
			return n, nil
		}
	}
}

func (b *resumingBody) keep(p []byte) {
	b.off += int64(len(p))
	if len(p) >= resumeOverlap {
		b.tail = append(b.tail[:0], p[len(p)-resumeOverlap:]...)
		return
	}
	if drop := len(b.tail) + len(p) - resumeOverlap; drop > 0 {
		b.tail = append(b.tail[:0], b.tail[drop:]...)
	}
	b.tail = append(b.tail, p...)
}

// resume replaces the broken body by one from the same byte, after
// checking the overlap reads as before.
func (b *resumingBody) resume(cause error) error {
	if b.body != nil {
		b.body.Close()
	}
	for {
		from := b.off - int64(len(b.tail))
		body, gen, err := b.src.reopen(b.ctx, b.gen, b.u, from, cause)
		if err != nil {
			return err
		}
		b.gen = gen
		got := make([]byte, len(b.tail))
		if _, err := io.ReadFull(body, got); err != nil {
			body.Close()
			if backoff.Transport(err) && b.ctx.Err() == nil {
				cause = err
				continue
			}
			return fmt.Errorf("%w: read the disk again after the reconnect: %w", ErrExport, err)
		}
		b.src.reread.Add(int64(len(got)))
		if !bytes.Equal(got, b.tail) {
			body.Close()
			return fmt.Errorf("%w: the disk's stream after the reconnect differs from the one read before, at bytes %d to %d; "+
				"the copy cannot resume it", ErrExport, from, b.off)
		}
		b.body = body
		b.src.job.Log.Info("download resumed after the reconnect", "url", redactURL(b.u), "from_byte", b.off)
		return nil
	}
}

func (b *resumingBody) Close() error {
	if b.body == nil {
		return nil
	}
	return b.body.Close()
}

// keepAlive tells the current lease the percent done every update
// interval until ctx ends. Updates that fail because the connection
// dropped are not counted: the downloads reconnect, or fail the job when
// the source stays away past the budget. Three other failures in a row
// fail the export, as the lease is then lost.
func (s *exportSource) keepAlive(ctx context.Context, percent func() int32) error {
	_, exp, _ := s.current()
	t := time.NewTicker(exp.UpdateInterval())
	defer t.Stop()
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		_, exp, _ := s.current()
		err := exp.lease.Progress(ctx, percent())
		switch {
		case err == nil:
			failures = 0
		case ctx.Err() != nil:
			return nil
		case backoff.Transport(err):
			s.job.Log.Debug("export lease progress update failed: the source is unreachable", "err", err)
		default:
			failures++
			s.job.Log.Warn("export lease progress update failed", "err", err, "failures", failures)
			if failures >= 3 {
				return fmt.Errorf("%w: keep the lease alive: %w", ErrExport, err)
			}
		}
	}
}

// release ends the current export as err, the export's outcome, says.
// When the source was lost, the lease is aborted as soon as the source
// answers again, for up to releaseTimeout; past that it is left to expire
// on the source. The error returned says which.
func (s *exportSource) release(ctx context.Context, err error) error {
	s.mu.Lock()
	exp, released := s.exp, s.released
	s.mu.Unlock()
	if released && err != nil {
		return fmt.Errorf("%w; the export lease was aborted and its snapshot removed when the source last answered", err)
	}
	if err == nil {
		exp.Release(nil)
		return nil
	}
	cause := err
	if context.Cause(ctx) != nil {
		cause = context.Cause(ctx)
	}
	if !errors.Is(err, ErrSourceLost) && !backoff.Transport(err) {
		exp.Release(cause)
		return err
	}
	log := s.job.Log.With("lease", exp.lease.Value)
	log.Warn("the source is lost; its export lease is aborted as soon as it answers again", "wait_at_most", releaseTimeout)
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	p := backoff.Policy{Budget: releaseTimeout, Min: s.d.opts.policy().Min, Max: s.d.opts.policy().Max}
	_, aerr := backoff.Retry(rctx, p, log, backoff.Transport, func(ctx context.Context, _ int, _ time.Time) error {
		actx, cancel := context.WithTimeout(ctx, minConnectAttempt)
		defer cancel()
		return exp.abort(actx, cause)
	})
	if aerr != nil {
		log.Error("the export lease could not be aborted; it is left to expire on the source", "err", aerr,
			"lease_timeout", exp.Timeout())
		return fmt.Errorf("%w; the export lease %s was left to expire on the source (%s without progress) and "+
			"its snapshot is removed by the next export of the VM", err, exp.lease.Value, exp.Timeout())
	}
	log.Info("export lease aborted once the source answered again")
	exp.removeSnapshot()
	return fmt.Errorf("%w; the export lease was aborted and its snapshot removed once the source answered again", err)
}
