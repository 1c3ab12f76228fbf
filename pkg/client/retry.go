package client

import (
	"context"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/google/uuid"

	"github.com/ferry-v2v/ferry/pkg/backoff"
	"github.com/ferry-v2v/ferry/pkg/grpcutil"
)

// idempotentWrites are the writes retried without a request_id.
// UpdateSettings sets the fields it names; with an etag, a repeat after
// the first applied is ABORTED rather than applied again. The custom
// methods (Enable, Disable, SetMigrationServerBandwidth, ...) are not
// here: a late repeat would undo a change made since, so they are retried
// only with a request_id, which the server answers from its record.
var idempotentWrites = map[string]bool{
	"UpdateSettings": true,
}

// retryingKey marks the context of an attempt the interceptor of another
// connection already drives, so that connection's interceptor passes the
// call straight through instead of starting a second retry loop.
type retryingKey struct{}

func retrying(ctx context.Context) bool { return ctx.Value(retryingKey{}) != nil }

func markRetrying(ctx context.Context) context.Context {
	return context.WithValue(ctx, retryingKey{}, true)
}

// methodName returns "GetCluster" for "/ferry.v1.TargetInventoryService/GetCluster".
func methodName(fullMethod string) string {
	return fullMethod[strings.LastIndex(fullMethod, "/")+1:]
}

// isRead reports whether the method only reads: Get*, List*, Watch*, and
// the health check.
func isRead(fullMethod string) bool {
	name := methodName(fullMethod)
	for _, p := range []string{"Get", "List", "Watch"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return name == "Check"
}

// retriable reports whether a call may be sent again after a failure that
// may have reached the server: reads, idempotent writes, and writes whose
// request carries a request_id (the server answers a repeat with the first
// answer).
func retriable(fullMethod string, req any) bool {
	if isRead(fullMethod) || idempotentWrites[methodName(fullMethod)] {
		return true
	}
	m, ok := req.(proto.Message)
	if !ok {
		return false
	}
	r := m.ProtoReflect()
	fd := r.Descriptor().Fields().ByName("request_id")
	return fd != nil && fd.Kind() == protoreflect.StringKind && r.Get(fd).String() != ""
}

// outgoing adds the read-consistency headers to a read: linearizable when
// asked to, else ferry-min-index (LastIndex) and ferry-max-staleness.
func (c *Client) outgoing(ctx context.Context, method string) context.Context {
	if !isRead(method) {
		return ctx
	}
	md, _ := metadata.FromOutgoingContext(ctx)
	for _, v := range md.Get(grpcutil.LinearizableHeader) {
		if v == grpcutil.LinearizableValue {
			return ctx
		}
	}
	if c.opts.LinearizableReads {
		return grpcutil.WithLinearizableRead(ctx)
	}
	if !c.opts.StaleReadsOK && len(md.Get(grpcutil.MinIndexHeader)) == 0 {
		ctx = grpcutil.WithMinIndex(ctx, c.LastIndex())
	}
	if len(md.Get(grpcutil.MaxStalenessHeader)) == 0 {
		ctx = grpcutil.WithMaxStaleness(ctx, c.opts.MaxStaleness)
	}
	return ctx
}

// withRequestID returns req with a fresh request_id when it is a write
// whose request has an empty one (a copy: the caller's message is left
// alone), so that every attempt carries the same id.
func withRequestID(fullMethod string, req any) any {
	if isRead(fullMethod) {
		return req
	}
	m, ok := req.(proto.Message)
	if !ok {
		return req
	}
	fd := m.ProtoReflect().Descriptor().Fields().ByName("request_id")
	if fd == nil || fd.Kind() != protoreflect.StringKind || m.ProtoReflect().Get(fd).String() != "" {
		return req
	}
	cp := proto.Clone(m)
	cp.ProtoReflect().Set(fd, protoreflect.ValueOfString(uuid.NewString()))
	return cp
}

// backoff is the pause before the attempt after the given one.
func (c *Client) backoff(attempt int) time.Duration {
	return backoff.Policy{Min: c.opts.Backoff, Max: c.opts.MaxBackoff}.Wait(attempt)
}

// reroute decides where an attempt that failed at addr with err goes next,
// and after how long. ok is false when err is not one that another
// attempt can cure. A leader hint is remembered for later calls even when
// this call is not retried.
func (c *Client) reroute(addr string, err error, attempt int) (next string, wait time.Duration, ok bool) {
	if hint, ok := grpcutil.LeaderFromError(err); ok {
		c.setTarget(hint)
		if hint == addr { // the node names itself: stale, let it settle
			return hint, c.backoff(attempt), true
		}
		return hint, 0, true
	}
	if grpcutil.IsNotLeader(err) { // no leader elected yet
		return addr, c.backoff(attempt), true
	}
	if grpcutil.IsStaleRead(err) { // behind, and no other leader named: try the next node
		next := c.after(addr)
		wait := c.backoff(attempt)
		if d, ok := grpcutil.RetryDelay(err); ok && d > wait {
			wait = d
		}
		return next, wait, true
	}
	if status.Code(err) == codes.Unavailable { // unreachable or going away
		next := c.after(addr)
		c.setTarget(next)
		return next, c.backoff(attempt), true
	}
	return "", 0, false
}

// addrOf returns the address of one of the client's connections.
func (c *Client) addrOf(cc *grpc.ClientConn) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	for addr, conn := range c.conns {
		if conn == cc {
			return addr
		}
	}
	return cc.Target()
}

// unaryInterceptor sends a unary call, and again elsewhere while the
// failure is one of following the leader and the call is safe to repeat.
func (c *Client) unaryInterceptor(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if retrying(ctx) {
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	ctx = c.outgoing(ctx, method)
	if _, ok := ctx.Deadline(); !ok && c.opts.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.opts.Timeout)
		defer cancel()
	}
	req = withRequestID(method, req)
	again := retriable(method, req)
	addr := c.addrOf(cc)
	var header metadata.MD
	opts = append(opts, grpc.Header(&header))
	err := c.attempt(ctx, again, func(ctx context.Context) error {
		return invoker(ctx, method, req, reply, cc, opts...)
	})
	for attempt := 1; err != nil; attempt++ {
		next, wait, ok := c.reroute(addr, err, attempt)
		if !ok || !again || attempt >= c.opts.MaxAttempts || sleep(ctx, wait) != nil {
			return err
		}
		conn, dialErr := c.conn(next)
		if dialErr != nil {
			return err
		}
		addr = next
		header = nil
		err = c.attempt(ctx, again, func(ctx context.Context) error {
			return conn.Invoke(markRetrying(ctx), method, req, reply, opts...)
		})
	}
	if idx, ok := grpcutil.AppliedIndex(header); ok {
		c.SeenIndex(idx)
	}
	if !c.spreads(method) {
		c.setTarget(addr)
	}
	return nil
}

// streamInterceptor opens a stream, elsewhere if the node cannot be
// reached or is not the leader (nothing was sent yet, so any stream may
// move). A server stream that only reads (WatchMigrationJobs) may also
// move until its first message arrives: the request is sent again there.
func (c *Client) streamInterceptor(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	if retrying(ctx) {
		return streamer(ctx, desc, cc, method, opts...)
	}
	ctx = c.outgoing(ctx, method)
	addr := c.addrOf(cc)
	cs, err := streamer(ctx, desc, cc, method, opts...)
	for attempt := 1; err != nil; attempt++ {
		next, wait, ok := c.reroute(addr, err, attempt)
		if !ok || attempt >= c.opts.MaxAttempts || sleep(ctx, wait) != nil {
			return nil, err
		}
		addr = next
		cs, err = c.openAt(ctx, next, desc, method, opts)
	}
	if desc.ServerStreams && !desc.ClientStreams && isRead(method) {
		return &replayStream{ClientStream: cs, c: c, ctx: ctx, desc: desc, method: method, opts: opts, addr: addr}, nil
	}
	c.setTarget(addr)
	return cs, nil
}

// attempt runs one attempt, within Options.AttemptTimeout when the call
// may be repeated; running out of it is UNAVAILABLE, so the call moves on.
func (c *Client) attempt(ctx context.Context, repeatable bool, call func(context.Context) error) error {
	if c.opts.AttemptTimeout <= 0 || !repeatable {
		return call(ctx)
	}
	actx, cancel := context.WithTimeout(ctx, c.opts.AttemptTimeout)
	defer cancel()
	err := call(actx)
	if err != nil && !over(ctx) && over(actx) {
		return status.Errorf(codes.Unavailable, "no answer within the attempt timeout (%v): %v", c.opts.AttemptTimeout, err)
	}
	return err
}

// over says whether ctx has ended or its deadline has passed: gRPC's own
// timer can end a call with DEADLINE_EXCEEDED a moment before the
// context's timer marks the context done (seen under load, when the
// attempt timeout then failed the call instead of moving on).
func over(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	d, ok := ctx.Deadline()
	return ok && !time.Now().Before(d)
}

// openAt opens a stream on the connection to addr, bypassing its retries.
func (c *Client) openAt(ctx context.Context, addr string, desc *grpc.StreamDesc, method string, opts []grpc.CallOption) (grpc.ClientStream, error) {
	conn, err := c.conn(addr)
	if err != nil {
		return nil, err
	}
	return conn.NewStream(markRetrying(ctx), desc, method, opts...)
}
