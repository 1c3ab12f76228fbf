package server_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"math/big"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferry-v2v/ferry/coordinator/internal/fsm"
	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	"github.com/ferry-v2v/ferry/coordinator/internal/testcluster"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testkit"
	"github.com/ferry-v2v/ferry/pkg/tlsutil"
)

// forgeStream is an attacker's Raft stream layer: it speaks the real
// NetworkTransport wire through whatever dial gives it.
type forgeStream struct {
	net.Listener
	dial func(addr string) (net.Conn, error)
}

func (s forgeStream) Dial(addr raft.ServerAddress, _ time.Duration) (net.Conn, error) {
	return s.dial(string(addr))
}

// forgeAppend sends target one AppendEntries, as a leader of a higher
// term would, carrying a committed PutCluster of name.
func forgeAppend(t *testing.T, target *testcluster.Node, name string, dial func(string) (net.Conn, error)) (*raft.AppendEntriesResponse, error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: forgeStream{Listener: ln, dial: dial}, MaxPool: 1, Timeout: 5 * time.Second,
	})
	defer func() { _ = trans.Close() }()
	data, err := fsm.Encode(&ledgerv1.Command{Time: timestamppb.Now(), Op: &ledgerv1.Command_PutCluster{PutCluster: &ledgerv1.PutCluster{
		Cluster: &ferryv1.Cluster{Name: name, DisplayName: "forged"}, RequestId: "forged-" + name,
	}}})
	if err != nil {
		t.Fatal(err)
	}
	st := target.Server.Node().Stats()
	term := st.Term + 10
	req := &raft.AppendEntriesRequest{
		RPCHeader:    raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("forger"), Addr: []byte(ln.Addr().String())},
		Term:         term,
		PrevLogEntry: st.LastIndex, PrevLogTerm: st.LastLogTerm,
		Entries:           []*raft.Log{{Index: st.LastIndex + 1, Term: term, Type: raft.LogCommand, Data: data}},
		LeaderCommitIndex: st.LastIndex + 1,
	}
	var resp raft.AppendEntriesResponse
	err = trans.AppendEntries(raft.ServerID(target.Name), raft.ServerAddress(target.Server.Node().RaftAddress()), req, &resp)
	return &resp, err
}

func tlsDialer(cfg *tls.Config) func(string) (net.Conn, error) {
	return func(addr string) (net.Conn, error) {
		return tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	}
}

// attackerTLS is a client configuration that does not check the server
// and presents role's pair from dir, or nothing when role is "".
func attackerTLS(t *testing.T, c *testcluster.Cluster, id *tlsutil.Identity) *tls.Config {
	t.Helper()
	// The attacker does not check the server, and asks for Raft by name.
	cfg := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"ferry-raft"}} //nolint:gosec // the attacker does not care
	if id != nil {
		dir, role := c.Issue(*id), tlsutil.PairName(id.Role)
		pair, err := tls.LoadX509KeyPair(filepath.Join(dir, role+".crt"), filepath.Join(dir, role+".key"))
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg
}

// TestRaftTrustBoundary runs one three-node cluster (Raft over mutual TLS,
// as every TLS install runs it) and attacks its Raft port and membership.
func TestRaftTrustBoundary(t *testing.T) {
	c := testcluster.Start(t, 3)
	leader := c.Leader(5 * time.Second)
	conn := c.Dial(leader.Addr())
	cluster := ferryv1.NewMembershipServiceClient(conn)

	t.Run("forged AppendEntries without a coordinator certificate", func(t *testing.T) {
		target := c.Followers()[0]
		terms := map[string]uint64{}
		for _, n := range c.Nodes() {
			terms[n.Name] = n.Server.Node().Stats().Term
		}
		for _, tc := range []struct {
			name string
			dial func(string) (net.Conn, error)
		}{
			{"plain TCP", func(addr string) (net.Conn, error) { return net.DialTimeout("tcp", addr, 5*time.Second) }},
			{"TLS without a certificate", tlsDialer(attackerTLS(t, c, nil))},
			{"TLS with the agent certificate", tlsDialer(attackerTLS(t, c, &tlsutil.Identity{Role: tlsutil.RoleIDAgent, Name: "kvm-1"}))},
			{"TLS with the operator certificate", tlsDialer(attackerTLS(t, c, &tlsutil.DefaultOperator))},
		} {
			name := "clusters/forged-" + strings.ReplaceAll(tc.name, " ", "-")
			resp, err := forgeAppend(t, target, name, tc.dial)
			if err == nil {
				t.Fatalf("%s: forged AppendEntries answered %+v, want the connection refused", tc.name, resp)
			}
			t.Logf("%s: refused: %v", tc.name, err)
			if _, ok := target.Server.Ledger().Cluster(name); ok {
				t.Fatalf("%s: the forged record %s was applied", tc.name, name)
			}
		}
		// Give a forged term every chance to surface, then check nothing moved.
		time.Sleep(time.Second)
		for _, n := range c.Nodes() {
			if got := n.Server.Node().Stats().Term; got != terms[n.Name] {
				t.Fatalf("%s: term %d after the forgeries, was %d", n.Name, got, terms[n.Name])
			}
			if id, _ := n.Server.Node().Leader(); id != leader.Name {
				t.Fatalf("%s: leader %q after the forgeries, want %s", n.Name, id, leader.Name)
			}
		}
		if err := createCluster(t, conn, "after-forgery"); err != nil {
			t.Fatalf("write after the forgeries: %v", err)
		}
	})

	t.Run("AddVoter checks the address", func(t *testing.T) {
		dead := testkit.FreeAddr(t)
		impostor := serveTLS(t, issue(t, c.TLSDir, "ferry://operator/impostor"))
		for _, tc := range []struct{ what, addr string }{
			{"nothing listens", dead},
			{"a non-coordinator certificate", impostor},
			// The API port presents the coordinator certificate but does
			// not speak Raft.
			{"a coordinator's API port", c.Followers()[0].Addr()},
		} {
			_, err := cluster.AddVoter(testcluster.Ctx(t, 20*time.Second), &ferryv1.AddVoterRequest{
				Id: "n9", RaftAddress: tc.addr, ApiAddress: "127.0.0.1:1",
			})
			if status.Code(err) != codes.FailedPrecondition || !strings.HasPrefix(status.Convert(err).Message(), "raft_address: "+tc.addr+" does not answer as a coordinator's Raft port") {
				t.Fatalf("AddVoter where %s: %v, want FAILED_PRECONDITION naming raft_address", tc.what, err)
			}
			t.Logf("AddVoter where %s: %v", tc.what, err)
		}
		m, err := leader.Server.Node().Members()
		if err != nil || len(m) != 3 {
			t.Fatalf("members after refused AddVoter: %v, %v", m, err)
		}
		if !leader.Server.Node().IsLeader() {
			t.Fatal("the leader stepped down")
		}
		if err := createCluster(t, conn, "after-addvoter"); err != nil {
			t.Fatalf("write after refused AddVoter: %v", err)
		}
	})

	t.Run("RemoveVoter of an unknown id", func(t *testing.T) {
		before := leader.Server.Node().Stats()
		_, err := cluster.RemoveVoter(testcluster.Ctx(t, 10*time.Second), &ferryv1.RemoveVoterRequest{Id: "n9"})
		if status.Code(err) != codes.NotFound || status.Convert(err).Message() != `id: coordinator "n9" not found` {
			t.Fatalf("RemoveVoter n9: %v, want NOT_FOUND naming the id", err)
		}
		// The one entry it takes is its audit event.
		after := leader.Server.Node().Stats()
		if after.LastIndex != before.LastIndex+1 || after.AppliedIndex != before.AppliedIndex+1 {
			t.Fatalf("RemoveVoter of an unknown id moved the log by more than its audit event: last %d→%d, applied %d→%d",
				before.LastIndex, after.LastIndex, before.AppliedIndex, after.AppliedIndex)
		}
		evs, _ := leader.Server.Ledger().AuditEvents(ledger.AuditFilter{}, 1)
		if len(evs) != 1 || evs[0].GetMethod() != "/ferry.v1.MembershipService/RemoveVoter" || evs[0].GetResult() != "NOT_FOUND" {
			t.Fatalf("the newest audit event is %v, want the refused RemoveVoter", evs)
		}
	})

	// The control: with the coordinator's own certificate the same forgery
	// is taken, so the refusals above are the TLS boundary's doing.
	t.Run("control: the coordinator certificate passes", func(t *testing.T) {
		target := c.Followers()[0]
		term := target.Server.Node().Stats().Term
		resp, err := forgeAppend(t, target, "clusters/forged-control", tlsDialer(attackerTLS(t, c, &tlsutil.DefaultCoordinator)))
		if err != nil {
			t.Fatalf("forged AppendEntries with the coordinator certificate: %v", err)
		}
		if !resp.Success || resp.Term <= term {
			t.Fatalf("target answered %+v, want success in a term above %d", resp, term)
		}
		testcluster.Eventually(t, 5*time.Second, "the forged record applied", func() bool {
			_, ok := target.Server.Ledger().Cluster("clusters/forged-control")
			return ok
		})
	})
}

// serveTLS accepts TLS connections with cert, offering to speak Raft,
// and completes handshakes.
func serveTLS(t *testing.T, cert tls.Certificate) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"ferry-raft"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.(*tls.Conn).Handshake()
			_ = c.Close()
		}
	}()
	return ln.Addr().String()
}

// issue signs a server-and-client certificate for 127.0.0.1 carrying the
// identity uri with the CA of dir.
func issue(t *testing.T, dir, uri string) tls.Certificate {
	t.Helper()
	caCert, err := tls.LoadX509KeyPair(filepath.Join(dir, tlsutil.CACertFile), filepath.Join(dir, tlsutil.CAKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caCert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, err := url.Parse(uri)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		NotBefore:    time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		URIs:        []*url.URL{id},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caCert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
