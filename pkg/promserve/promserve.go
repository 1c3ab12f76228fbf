// Package promserve serves a Prometheus registry at /metrics for the
// coordinator and the agent (--metrics-listen).
//
// How a scraper authenticates depends on the address: on a loopback
// address (127.0.0.0/8, ::1, localhost) /metrics is plain HTTP, reachable
// only from the host itself (a Prometheus or a forwarding agent running
// there); on any other address it is HTTPS with the daemon's own
// certificate, and the scraper must present a client certificate of the
// install's CA whose identity's role Allowed accepts (operator or viewer:
// 'ferry-coordinator tls issue --role viewer --name prometheus'). A
// certificate without a ferry:// identity, or of another role, is answered
// 403.
package promserve

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ferry-v2v/ferry/pkg/tlsutil"
)

// Path is where the metrics are served.
const Path = "/metrics"

// Options configure a Server.
type Options struct {
	// Addr is the listen address (host:port; port 0 picks one).
	Addr     string
	Gatherer prometheus.Gatherer
	// TLS is the server configuration for a non-loopback Addr: the
	// daemon's certificate, and ClientCAs to check scrapers against.
	// Listen fails without one on such an address.
	TLS *tls.Config
	// Allowed says whether a scraper of this role may read the metrics
	// over HTTPS; nil allows operators and viewers.
	Allowed func(tlsutil.Role) bool
	Logger  *slog.Logger
}

// Server is a listening /metrics endpoint.
type Server struct {
	lis   net.Listener
	srv   *http.Server
	plain bool
	log   *slog.Logger
}

// IsLoopback says whether addr's host is a loopback address or localhost.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Listen binds the address; Serve serves it.
func Listen(o Options) (*Server, error) {
	plain := IsLoopback(o.Addr)
	if !plain && o.TLS == nil {
		return nil, fmt.Errorf("--metrics-listen %s: not a loopback address, and there is no certificate to serve HTTPS with (plaintext mode serves metrics on loopback only)", o.Addr)
	}
	if o.Allowed == nil {
		o.Allowed = func(r tlsutil.Role) bool { return r == tlsutil.RoleIDOperator || r == tlsutil.RoleIDViewer }
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	lis, err := net.Listen("tcp", o.Addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-listen %s: %w", o.Addr, err)
	}
	mux := http.NewServeMux()
	var h http.Handler = promhttp.HandlerFor(o.Gatherer, promhttp.HandlerOpts{})
	if !plain {
		h = authorized(h, o.Allowed)
		tc := o.TLS.Clone()
		tc.ClientAuth = tls.RequireAndVerifyClientCert
		lis = tls.NewListener(lis, tc)
	}
	mux.Handle(Path, h)
	return &Server{lis: lis, plain: plain, log: o.Logger.With("component", "metrics"),
		srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}}, nil
}

// authorized answers 403 unless the verified client certificate carries an
// identity whose role is allowed.
func authorized(next http.Handler, allowed func(tlsutil.Role) bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
			http.Error(w, "a client certificate of the install's CA is required", http.StatusForbidden)
			return
		}
		id, err := tlsutil.IdentityFromCert(r.TLS.VerifiedChains[0][0])
		if err != nil || !allowed(id.Role) {
			http.Error(w, fmt.Sprintf("certificate %q may not read metrics: use one of role operator or viewer", r.TLS.VerifiedChains[0][0].Subject.CommonName), http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// Addr is the bound address.
func (s *Server) Addr() string { return s.lis.Addr().String() }

// Plain says whether it serves plain HTTP (a loopback address).
func (s *Server) Plain() bool { return s.plain }

// Serve serves until ctx ends.
func (s *Server) Serve(ctx context.Context) error {
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_ = s.srv.Shutdown(sctx)
		case <-done:
		}
	}()
	scheme := "https"
	if s.plain {
		scheme = "http"
	}
	s.log.Info("serving metrics", "url", scheme+"://"+s.Addr()+Path)
	if err := s.srv.Serve(s.lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve metrics: %w", err)
	}
	return nil
}

// Close stops serving at once.
func (s *Server) Close() error { return s.srv.Close() }
