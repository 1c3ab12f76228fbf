package server_test

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/coordinator/internal/testcluster"
	"github.com/ferry-v2v/ferry/pkg/tlsutil"
)

// TestMetricsEndpointByRole: a coordinator's --metrics-listen on a
// non-loopback address is HTTPS with its API certificate; a viewer's and
// an operator's certificates read it (the authz table's /metrics rule), an
// agent's is answered 403, and a revoked viewer's certificate fails the
// handshake.
func TestMetricsEndpointByRole(t *testing.T) {
	c := testcluster.New(t)
	c.MetricsListen = "0.0.0.0:0"
	c.AddNode()
	c.WaitMembers(1, 10*time.Second)
	leader := c.Leader(10 * time.Second)
	_, port, _ := net.SplitHostPort(leader.Server.MetricsAddr())
	url := "https://127.0.0.1:" + port + "/metrics"
	get := func(id tlsutil.Identity) (int, string, error) {
		tc, err := tlsutil.ClientConfigFromDir(c.Issue(id), tlsutil.PairName(id.Role))
		if err != nil {
			t.Fatal(err)
		}
		tc.ServerName = "127.0.0.1"
		cl := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
		resp, err := cl.Get(url)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	viewer := tlsutil.Identity{Role: tlsutil.RoleIDViewer, Name: "prometheus"}
	for _, id := range []tlsutil.Identity{viewer, tlsutil.DefaultOperator} {
		code, body, err := get(id)
		if err != nil || code != http.StatusOK || !strings.Contains(body, "ferry_raft_leader 1") || !strings.Contains(body, "ferry_raft_term ") {
			t.Errorf("%s: GET /metrics = %d %v:\n%.300s", id, code, err, body)
		}
	}
	agent := tlsutil.Identity{Role: tlsutil.RoleIDAgent, Name: "kvm-1"}
	if code, body, err := get(agent); err != nil || code != http.StatusForbidden {
		t.Errorf("%s: GET /metrics = %d %v: %s; want 403", agent, code, err, body)
	}
	revoke(t, c, c.Dial(leader.Addr()), viewer)
	if code, _, err := get(viewer); err == nil {
		t.Errorf("a revoked viewer: GET /metrics = %d, want a refused handshake", code)
	}
}
