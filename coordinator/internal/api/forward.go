package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/ferry-v2v/ferry/coordinator/internal/authz"
	"github.com/ferry-v2v/ferry/pkg/grpcutil"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// forwardedHeader marks a call one coordinator forwarded to another, so a
// call is forwarded at most once: a node that receives one and is not the
// leader answers NOT_LEADER instead of forwarding again.
const forwardedHeader = "ferry-forwarded"

// ferryPrefix selects the calls the interceptors handle: ferry.v1 only,
// never the agent stream, health or reflection.
const ferryPrefix = "/ferry.v1."

// writeVerbs are the method-name prefixes of the calls that change the
// ledger and so must run on the leader.
var writeVerbs = []string{"Create", "Delete", "Update", "Enable", "Disable", "Set", "Cancel", "Restart", "Add", "Remove", "Revoke", "Release"}

// leaderOnly are reads that only the leader can answer: it holds the
// agent sessions they go through, and the agents' live facts a preview
// weighs a batch against (the ledger's copy is a checkpoint interval old).
var leaderOnly = map[string]bool{
	"/ferry.v1.SourceService/SyncSource":                 true,
	"/ferry.v1.MigrationJobService/PreviewMigrationJobs": true,
}

// IsWriteMethod says whether a full method name ("/ferry.v1.S/CreateX") is
// a write, or a leader-only read, that a follower forwards to the leader.
func IsWriteMethod(fullMethod string) bool {
	if leaderOnly[fullMethod] {
		return true
	}
	if !strings.HasPrefix(fullMethod, ferryPrefix) {
		return false
	}
	name := fullMethod[strings.LastIndex(fullMethod, "/")+1:]
	for _, v := range writeVerbs {
		if strings.HasPrefix(name, v) {
			return true
		}
	}
	return false
}

// UnaryInterceptor runs writes on the leader and linearizable reads after
// LinearizableRead. On a follower it forwards writes, and reads that ask
// to be linearizable, to the leader through Deps.Dialer, once; with no
// leader known it answers UNAVAILABLE "no leader elected yet". Other reads
// are served locally once the ledger is as fresh as the node's read floor
// and the caller's ferry-min-index and ferry-max-staleness headers ask
// (see reads.go). Every answer served here carries ferry-applied-index and
// ferry-node headers. A NOT_LEADER answer carries the leader in the
// ferry-leader trailer too.
func (a *API) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if err := a.refuseBadText(ctx, req); err != nil {
			return nil, err
		}
		resp, err := a.interceptUnary(ctx, req, info, handler)
		if addr, ok := grpcutil.LeaderFromError(err); ok {
			_ = grpcutil.SetLeaderTrailer(ctx, addr)
		}
		return resp, err
	}
}

func (a *API) interceptUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if !strings.HasPrefix(info.FullMethod, ferryPrefix) {
		return handler(ctx, req)
	}
	opts, err := grpcutil.IncomingReadOptions(ctx)
	if err != nil {
		return nil, badReadOptions(err)
	}
	forwarded := wasForwarded(ctx)
	if IsWriteMethod(info.FullMethod) || a.syncsFirst(req) {
		if !a.proposer.IsLeader() && !forwarded {
			return a.fwd.unary(ctx, info.FullMethod, req)
		}
		return a.serveWrite(ctx, req, info, handler, forwarded)
	}
	if opts.Linearizable {
		return a.serveLinearizable(ctx, req, info, handler, forwarded)
	}
	return a.serveLocalRead(ctx, req, info, handler, opts, forwarded)
}

// StreamInterceptor relays server-streaming ferry.v1 calls
// (WatchMigrationJobs) from a follower to the leader, whose watch carries
// live progress; with no leader known a follower serves the stream itself
// (state changes only), unless the caller asked for a linearizable read,
// and, as a local read, only from a ledger at the read floor and the
// caller's ferry-min-index (else STALE_READ).
func (a *API) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ss = textCheckedStream{ServerStream: ss, a: a}
		err := a.interceptStream(srv, ss, info, handler)
		if addr, ok := grpcutil.LeaderFromError(err); ok {
			ss.SetTrailer(metadata.Pairs(grpcutil.LeaderTrailer, addr))
		}
		return err
	}
}

func (a *API) interceptStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx := ss.Context()
	if !strings.HasPrefix(info.FullMethod, ferryPrefix) || info.IsClientStream {
		return handler(srv, ss)
	}
	linear := grpcutil.IsLinearizableRead(ctx)
	if a.proposer.IsLeader() || wasForwarded(ctx) {
		if linear {
			lctx, cancel := context.WithTimeout(ctx, a.forwardTimeout)
			err := a.proposer.LinearizableRead(lctx)
			cancel()
			if err != nil {
				return a.toStatus(ctx, err)
			}
		} else if err := a.streamReadiness(ctx); err != nil {
			return err
		}
		return handler(srv, ss)
	}
	if a.proposer.LeaderAPIAddress() == "" && !linear {
		if err := a.streamReadiness(ctx); err != nil {
			return err
		}
		return handler(srv, ss)
	}
	return a.fwd.serverStream(ss, info.FullMethod)
}

// syncsFirst says whether a ListSourceVMs must sync the source first, and
// so run on the leader: it asks to refresh, or the source was never synced.
func (a *API) syncsFirst(req any) bool {
	r, ok := req.(*ferryv1.ListSourceVMsRequest)
	return ok && (r.GetRefresh() || !a.ledger.HasSourceInventory(r.GetSource()))
}

func wasForwarded(ctx context.Context) bool {
	md, _ := metadata.FromIncomingContext(ctx)
	return len(md.Get(forwardedHeader)) > 0
}

// leaderInfo is what the forwarder needs to know about leadership.
type leaderInfo interface {
	LeaderAPIAddress() string
}

// forwarder sends calls to the leader over connections from the Dialer,
// which pools them.
type forwarder struct {
	leader leaderInfo
	dial   Dialer
	log    *slog.Logger
	types  sync.Map // full method → [2]protoreflect.MessageDescriptor{in, out}

	// contact is when this node last heard from the leader (nil: never
	// give up on a forwarded unary call before the caller does).
	contact func() time.Time
	// timeout is how long a forwarded unary call may wait for a leader
	// this node no longer hears from; silent is how long without contact
	// counts as not hearing from it.
	timeout, silent time.Duration
}

func newForwarder(leader leaderInfo, dial Dialer, log *slog.Logger) *forwarder {
	return &forwarder{leader: leader, dial: dial, log: log}
}

// Why a forwarded call was given up.
var (
	errLeaderMoved  = errors.New("another leader was elected")
	errLeaderSilent = errors.New("the leader is silent")
)

// guard runs one forwarded call to the leader at addr with a context
// cancelled when the call is given up: another leader becomes known, or
// the call has waited the forward timeout while this node has not heard
// from the leader for a heartbeat timeout (it is paused, cut off or
// dead). A call given up ends UNAVAILABLE (NOT_LEADER) naming the leader
// known then; a healthy leader's slow call is never given up.
func (f *forwarder) guard(ctx context.Context, addr string, call func(context.Context) error) error {
	cctx, end := f.leaderWatch(ctx, addr, false)
	err := call(cctx)
	if gaveUp := end(); gaveUp != nil && err != nil && ctx.Err() == nil {
		return gaveUp
	}
	return err
}

// leaderWatch returns ctx cancelled when the leader at addr is given up
// (see guard; a stream, which may rightly wait long for its next message,
// is given up when another leader is known or the leader has been silent
// for the whole forward timeout), and end, which stops watching and
// returns the NOT_LEADER error to answer with when it gave up.
func (f *forwarder) leaderWatch(ctx context.Context, addr string, stream bool) (context.Context, func() error) {
	if f.contact == nil || f.timeout <= 0 {
		return ctx, func() error { return nil }
	}
	cctx, cancel := context.WithCancelCause(ctx)
	start := time.Now()
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(max(f.silent/10, 10*time.Millisecond))
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			silent := time.Since(f.contact())
			if now := f.leader.LeaderAPIAddress(); now != "" && now != addr {
				cancel(errLeaderMoved)
				return
			}
			if (!stream && time.Since(start) >= f.timeout && silent > f.silent) || (stream && silent > f.timeout) {
				cancel(errLeaderSilent)
				return
			}
		}
	}()
	var once sync.Once
	var gaveUp error
	return cctx, func() error {
		once.Do(func() {
			close(done)
			wg.Wait()
			cause := context.Cause(cctx)
			cancel(nil)
			if cause != errLeaderMoved && cause != errLeaderSilent {
				return
			}
			now := f.leader.LeaderAPIAddress()
			msg := fmt.Sprintf("gave up on the leader at %s after %v: %v", addr, time.Since(start).Round(time.Millisecond), cause)
			switch {
			case now != "" && now != addr:
				msg += "; the leader is now at " + now
			case now == "":
				msg += "; no new leader elected yet"
			}
			f.log.Info("forwarded call given up", "leader", addr, "now", now, "cause", cause, "stream", stream)
			gaveUp = grpcutil.NotLeaderErrorMsg(now, msg+"; the call may or may not have taken effect")
		})
		return gaveUp
	}
}

// unary forwards one call, and once more if the leader changed under it.
// The headers and trailers of the last attempt go back to the caller.
func (f *forwarder) unary(ctx context.Context, method string, req any) (any, error) {
	addr := f.leader.LeaderAPIAddress()
	for attempt := 0; ; attempt++ {
		if addr == "" || f.dial == nil {
			return nil, grpcutil.NotLeaderError(addr)
		}
		var header, trailer metadata.MD
		var resp any
		err := f.guard(ctx, addr, func(ctx context.Context) error {
			var err error
			resp, err = f.invoke(ctx, addr, method, req, grpc.Header(&header), grpc.Trailer(&trailer))
			return err
		})
		if wasGivenUp(err) {
			return nil, err
		}
		next := ""
		if err != nil && attempt == 0 && status.Code(err) == codes.Unavailable {
			next = f.nextLeader(err, addr)
		}
		if next == "" {
			relay(ctx, header, trailer)
			return resp, err
		}
		f.log.Debug("leader changed while forwarding; retrying", "method", method, "from", addr, "to", next)
		addr = next
	}
}

// wasGivenUp says whether err is guard's answer to a call it gave up:
// the leader may have taken it, so it is not sent again here.
func wasGivenUp(err error) bool {
	return grpcutil.IsNotLeader(err) && strings.HasPrefix(status.Convert(err).Message(), "gave up on the leader")
}

// relay passes the leader's metadata on, minus what gRPC itself sets.
func relay(ctx context.Context, header, trailer metadata.MD) {
	if h := userMetadata(header); len(h) > 0 {
		_ = grpc.SetHeader(ctx, h)
	}
	if t := userMetadata(trailer); len(t) > 0 {
		_ = grpc.SetTrailer(ctx, t)
	}
}

func userMetadata(in metadata.MD) metadata.MD {
	out := metadata.MD{}
	for k, v := range in {
		if strings.HasPrefix(k, ":") || strings.HasPrefix(k, "grpc-") || k == "content-type" || k == "user-agent" || k == "te" {
			continue
		}
		out[k] = append([]string(nil), v...)
	}
	return out
}

// nextLeader is where to retry after an UNAVAILABLE from addr: the leader
// the answer names, else a newer leader this node knows of, else "".
func (f *forwarder) nextLeader(err error, addr string) string {
	if hint, ok := grpcutil.LeaderFromError(err); ok && hint != addr {
		return hint
	}
	if now := f.leader.LeaderAPIAddress(); now != addr {
		return now
	}
	return ""
}

func (f *forwarder) invoke(ctx context.Context, addr, method string, req any, opts ...grpc.CallOption) (any, error) {
	_, outDesc, err := f.methodTypes(method)
	if err != nil {
		return nil, err
	}
	conn, err := f.dial(ctx, addr)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "reach the leader at %s: %v", addr, err)
	}
	out := newMessage(outDesc)
	if err := conn.Invoke(outgoing(ctx), method, req, out, opts...); err != nil {
		return nil, err
	}
	return out, nil
}

// serverStream relays a server-streaming call to the leader: the one
// request up, every response down, and the leader's status at the end. A
// relay to a leader that another replaced, or that has been silent for the
// forward timeout, ends UNAVAILABLE naming the leader known then.
func (f *forwarder) serverStream(ss grpc.ServerStream, method string) error {
	ctx := ss.Context()
	addr := f.leader.LeaderAPIAddress()
	if addr == "" || f.dial == nil {
		return grpcutil.NotLeaderError(addr)
	}
	inDesc, outDesc, err := f.methodTypes(method)
	if err != nil {
		return err
	}
	in := newMessage(inDesc)
	if err := ss.RecvMsg(in); err != nil {
		return err
	}
	conn, err := f.dial(ctx, addr)
	if err != nil {
		return status.Errorf(codes.Unavailable, "reach the leader at %s: %v", addr, err)
	}
	outer := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ctx, end := f.leaderWatch(ctx, addr, true)
	defer end()
	// A relay given up ends with guard's NOT_LEADER: the caller watches
	// again at the leader it names.
	givenUp := func(err error) error {
		if gaveUp := end(); gaveUp != nil && outer.Err() == nil {
			return gaveUp
		}
		return err
	}
	cs, err := conn.NewStream(outgoing(ctx), &grpc.StreamDesc{ServerStreams: true}, method)
	if err != nil {
		return givenUp(err)
	}
	if err := cs.SendMsg(in); err != nil && !errors.Is(err, io.EOF) {
		return givenUp(err)
	}
	if err := cs.CloseSend(); err != nil {
		return givenUp(err)
	}
	for {
		out := newMessage(outDesc)
		err := cs.RecvMsg(out)
		if err != nil {
			ss.SetTrailer(userMetadata(cs.Trailer()))
			if errors.Is(err, io.EOF) {
				return nil
			}
			return givenUp(err)
		}
		if err := ss.SendMsg(out); err != nil {
			return err
		}
	}
}

// outgoing passes the caller's metadata on, minus transport headers, marks
// the call as forwarded and names the caller it is made for (never what
// the caller itself put in those headers), so the leader authorizes the
// caller's role, not this coordinator's.
func outgoing(ctx context.Context) context.Context {
	in, _ := metadata.FromIncomingContext(ctx)
	md := userMetadata(in)
	md.Set(forwardedHeader, "1")
	authz.Forwarded(ctx, md)
	return metadata.NewOutgoingContext(ctx, md)
}

// methodTypes finds a method's request and response messages in the
// global registry (the generated ferry.v1 packages register themselves).
func (f *forwarder) methodTypes(method string) (protoreflect.MessageDescriptor, protoreflect.MessageDescriptor, error) {
	if v, ok := f.types.Load(method); ok {
		d := v.([2]protoreflect.MessageDescriptor)
		return d[0], d[1], nil
	}
	svc, name, ok := strings.Cut(strings.TrimPrefix(method, "/"), "/")
	if !ok {
		return nil, nil, status.Errorf(codes.Internal, "forward %s: not a full method name", method)
	}
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(svc))
	sd, isSvc := d.(protoreflect.ServiceDescriptor)
	if err != nil || !isSvc {
		return nil, nil, status.Errorf(codes.Internal, "forward %s: service %s not registered", method, svc)
	}
	md := sd.Methods().ByName(protoreflect.Name(name))
	if md == nil {
		return nil, nil, status.Errorf(codes.Unimplemented, "forward %s: no such method", method)
	}
	f.types.Store(method, [2]protoreflect.MessageDescriptor{md.Input(), md.Output()})
	return md.Input(), md.Output(), nil
}

// newMessage makes the generated type of d, or a dynamic one.
func newMessage(d protoreflect.MessageDescriptor) proto.Message {
	if t, err := protoregistry.GlobalTypes.FindMessageByName(d.FullName()); err == nil {
		return t.New().Interface()
	}
	return dynamicpb.NewMessage(d)
}
