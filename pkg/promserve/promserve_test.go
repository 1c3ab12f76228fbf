package promserve

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferry-v2v/ferry/pkg/tlsutil"
)

func registry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_test_things_total", Help: "Things."})
	c.Add(3)
	reg.MustRegister(c)
	return reg
}

func serve(t *testing.T, o Options) *Server {
	t.Helper()
	s, err := Listen(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = s.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return s
}

func get(t *testing.T, c *http.Client, url string) (int, string, error) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// TestLoopbackIsPlainHTTP: on a loopback address /metrics is plain HTTP.
func TestLoopbackIsPlainHTTP(t *testing.T) {
	s := serve(t, Options{Addr: "127.0.0.1:0", Gatherer: registry()})
	if !s.Plain() {
		t.Fatal("a loopback address serves HTTPS, want plain HTTP")
	}
	code, body, err := get(t, &http.Client{Timeout: 5 * time.Second}, "http://"+s.Addr()+Path)
	if err != nil || code != http.StatusOK || !strings.Contains(body, "ferry_test_things_total 3") {
		t.Fatalf("GET = %d %v: %s", code, err, body)
	}
}

// TestOtherAddressNeedsAScraperCertificate: on any other address /metrics
// is HTTPS; a viewer's and an operator's certificates read it, an agent's
// is answered 403 naming the roles, no certificate does not get through
// the handshake, and without TLS material Listen refuses the address.
func TestOtherAddressNeedsAScraperCertificate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	if err := tlsutil.InitPKI(dir, tlsutil.Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(Options{Addr: "0.0.0.0:0", Gatherer: registry()}); err == nil || !strings.Contains(err.Error(), "--metrics-listen") {
		t.Fatalf("Listen without TLS on 0.0.0.0 = %v, want an error naming --metrics-listen", err)
	}
	tc, err := tlsutil.ServerConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	s := serve(t, Options{Addr: "0.0.0.0:0", Gatherer: registry(), TLS: tc})
	_, port, _ := net.SplitHostPort(s.Addr())
	url := "https://127.0.0.1:" + port + Path
	client := func(id *tlsutil.Identity) *http.Client {
		c, err := tlsutil.ClientConfigFromDir(dir, tlsutil.RoleClient)
		if err != nil {
			t.Fatal(err)
		}
		c.Certificates = nil
		if id != nil {
			sub, _, err := tlsutil.Issue(dir, *id, tlsutil.Options{})
			if err != nil {
				t.Fatal(err)
			}
			pair := tlsutil.PairName(id.Role)
			cert, err := tls.LoadX509KeyPair(filepath.Join(sub, pair+".crt"), filepath.Join(sub, pair+".key"))
			if err != nil {
				t.Fatal(err)
			}
			c.Certificates = []tls.Certificate{cert}
		}
		c.ServerName = "127.0.0.1"
		return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: c}}
	}
	for _, id := range []tlsutil.Identity{{Role: tlsutil.RoleIDViewer, Name: "prometheus"}, {Role: tlsutil.RoleIDOperator, Name: "ops"}} {
		code, body, err := get(t, client(&id), url)
		if err != nil || code != http.StatusOK || !strings.Contains(body, "ferry_test_things_total 3") {
			t.Errorf("%s: GET = %d %v: %s", id, code, err, body)
		}
	}
	agent := tlsutil.Identity{Role: tlsutil.RoleIDAgent, Name: "kvm-1"}
	if code, body, err := get(t, client(&agent), url); err != nil || code != http.StatusForbidden || !strings.Contains(body, "operator or viewer") {
		t.Errorf("%s: GET = %d %v: %s; want 403 naming the roles", agent, code, err, body)
	}
	if code, _, err := get(t, client(nil), url); err == nil {
		t.Errorf("without a client certificate: GET = %d, want a failed handshake", code)
	}
}
