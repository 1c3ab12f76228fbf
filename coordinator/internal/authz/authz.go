// Package authz authorizes every call a coordinator serves from the
// identity in the caller's certificate (ferry://ROLE/NAME, see
// tlsutil.IdentityFromCert) and one table of who may call what (table.go).
//
// One unary and one stream interceptor, first in the chain, refuse a call
// with PERMISSION_DENIED before anything else runs: a certificate without
// an identity, a revoked certificate, a role the method's rule does not
// name. A call a follower forwards to the leader carries the original
// caller in metadata; the leader trusts it only when the direct peer is a
// coordinator, and authorizes the original caller, so forwarding never
// widens a role. Open streams of a certificate revoked later are ended
// within RevocationCheckInterval.
package authz

import (
	"context"
	"crypto/x509"
	"log/slog"
	"sync"
	"time"

	metrics "github.com/hashicorp/go-metrics/compat"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/ferry-v2v/ferry/pkg/tlsutil"
)

// Metadata keys of a forwarded call: the original caller's identity URI
// and certificate serial, set by the forwarding coordinator.
const (
	CallerHeader       = "ferry-caller"
	CallerSerialHeader = "ferry-caller-serial"
)

// RevocationCheckInterval is how often open streams are checked against
// the revocation list.
const RevocationCheckInterval = time.Second

// Caller is who a call is made for.
type Caller struct {
	tlsutil.Identity
	// Serial is the caller's certificate serial (tlsutil.SerialString).
	Serial string
	// Via is the coordinator that forwarded the call, if one did.
	Via *tlsutil.Identity
}

type callerKey struct{}

// CallerFrom returns the authorized caller of the call in ctx; false when
// authorization is off (an --insecure coordinator, or a test without it).
func CallerFrom(ctx context.Context) (Caller, bool) {
	c, ok := ctx.Value(callerKey{}).(Caller)
	return c, ok
}

// WithCaller returns ctx carrying c, as the interceptors do.
func WithCaller(ctx context.Context, c Caller) context.Context {
	return context.WithValue(ctx, callerKey{}, c)
}

// Forwarded sets md's caller headers to the caller of ctx, replacing any
// the client sent itself, for a call this coordinator forwards.
func Forwarded(ctx context.Context, md metadata.MD) {
	md.Delete(CallerHeader)
	md.Delete(CallerSerialHeader)
	if c, ok := CallerFrom(ctx); ok {
		md.Set(CallerHeader, c.Identity.String())
		md.Set(CallerSerialHeader, c.Serial)
	}
}

// Revocations says whether a certificate serial is revoked.
type Revocations interface {
	Revoked(serial string) bool
}

// Authorizer holds the interceptors and the open streams they watch.
type Authorizer struct {
	revoked Revocations
	log     *slog.Logger

	mu      sync.Mutex
	streams map[*openStream]struct{}
}

type openStream struct {
	serials []string
	cancel  context.CancelCauseFunc
}

// New returns an authorizer checking revocations against revoked (nil:
// none are).
func New(revoked Revocations, log *slog.Logger) *Authorizer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Authorizer{revoked: revoked, log: log.With("component", "authz"), streams: map[*openStream]struct{}{}}
}

// Unary authorizes unary calls.
func (a *Authorizer) Unary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		c, err := a.authorize(ctx, info.FullMethod)
		metrics.MeasureSince([]string{"ferry", "authz", "unary"}, start) // see bench's FERRY_BENCH_STAGES
		if err != nil {
			return nil, err
		}
		return handler(WithCaller(ctx, c), req)
	}
}

// Stream authorizes streaming calls and ends them when their certificate
// (or the forwarded caller's) is revoked while they are open.
func (a *Authorizer) Stream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		c, err := a.authorize(ss.Context(), info.FullMethod)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithCancelCause(WithCaller(ss.Context(), c))
		defer cancel(nil)
		o := &openStream{serials: []string{c.Serial}, cancel: cancel}
		if c.Via != nil {
			o.serials = append(o.serials, peerSerial(ss.Context()))
		}
		a.mu.Lock()
		a.streams[o] = struct{}{}
		a.mu.Unlock()
		defer func() {
			a.mu.Lock()
			delete(a.streams, o)
			a.mu.Unlock()
		}()
		return handler(srv, stream{ServerStream: ss, ctx: ctx})
	}
}

type stream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s stream) Context() context.Context { return s.ctx }

// Run ends the open streams of revoked certificates every
// RevocationCheckInterval until ctx ends.
func (a *Authorizer) Run(ctx context.Context) error {
	t := time.NewTicker(RevocationCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			a.CutRevoked()
		}
	}
}

// CutRevoked ends every open stream whose certificate is revoked.
func (a *Authorizer) CutRevoked() {
	if a.revoked == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for o := range a.streams {
		for _, s := range o.serials {
			if a.revoked.Revoked(s) {
				o.cancel(status.Errorf(codes.PermissionDenied, "certificate %s was revoked", s))
				delete(a.streams, o)
				break
			}
		}
	}
}

// authorize finds the caller of ctx and checks it may call method.
func (a *Authorizer) authorize(ctx context.Context, method string) (Caller, error) {
	cert, err := peerCert(ctx)
	if err != nil {
		return Caller{}, err
	}
	id, err := tlsutil.IdentityFromCert(cert)
	if err != nil {
		return Caller{}, status.Errorf(codes.PermissionDenied, "%s: the client certificate %q carries no ferry://ROLE/NAME identity; issue one with 'ferry-coordinator tls issue'",
			method, cert.Subject.CommonName)
	}
	serial := tlsutil.SerialString(cert)
	if err := a.notRevoked(serial, id); err != nil {
		return Caller{}, err
	}
	c := Caller{Identity: id, Serial: serial}
	if id.Role == tlsutil.RoleIDCoordinator {
		if fwd, ok, err := a.forwardedCaller(ctx, id); err != nil {
			return Caller{}, err
		} else if ok {
			c = fwd
		}
	}
	if !Allowed(c.Role, method) {
		return Caller{}, denied(c, method)
	}
	return c, nil
}

// forwardedCaller is the caller a coordinator forwarded the call for.
func (a *Authorizer) forwardedCaller(ctx context.Context, via tlsutil.Identity) (Caller, bool, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	uris := md.Get(CallerHeader)
	if len(uris) == 0 {
		return Caller{}, false, nil
	}
	serials := md.Get(CallerSerialHeader)
	if len(uris) != 1 || len(serials) != 1 {
		return Caller{}, false, status.Errorf(codes.PermissionDenied, "a forwarded call names %d callers", len(uris))
	}
	id, err := tlsutil.ParseIdentity(uris[0])
	if err != nil {
		return Caller{}, false, status.Errorf(codes.PermissionDenied, "a forwarded call names a malformed caller: %v", err)
	}
	if err := a.notRevoked(serials[0], id); err != nil {
		return Caller{}, false, err
	}
	return Caller{Identity: id, Serial: serials[0], Via: &via}, true, nil
}

func (a *Authorizer) notRevoked(serial string, id tlsutil.Identity) error {
	if a.revoked != nil && a.revoked.Revoked(serial) {
		return status.Errorf(codes.PermissionDenied, "the certificate of %s (serial %s) is revoked", id, serial)
	}
	return nil
}

func denied(c Caller, method string) error {
	if _, ok := table[method]; !ok {
		return status.Errorf(codes.PermissionDenied, "%s has no authorization rule; nobody may call it", method)
	}
	return status.Errorf(codes.PermissionDenied, "role %s (%s) may not call %s", c.Role, c.Identity, method)
}

func peerCert(ctx context.Context) (*x509.Certificate, error) {
	p, ok := peer.FromContext(ctx)
	if ok && p.AuthInfo != nil {
		if info, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(info.State.VerifiedChains) > 0 && len(info.State.VerifiedChains[0]) > 0 {
			return info.State.VerifiedChains[0][0], nil
		}
	}
	return nil, status.Error(codes.PermissionDenied, "no verified client certificate")
}

func peerSerial(ctx context.Context) string {
	if cert, err := peerCert(ctx); err == nil {
		return tlsutil.SerialString(cert)
	}
	return ""
}
