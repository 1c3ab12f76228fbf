package session

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

func TestSourceInventoryThroughTheAgent(t *testing.T) {
	f := newFixture(t, Config{}, true)
	f.seedJob("hosts/h1", 1)
	src, _ := f.ledger.Source("sources/kvm1")
	server, _ := f.ledger.MigrationServer("migrationServers/ms")
	if _, err := f.mgr.SourceInventory(context.Background(), src, server); status.Code(err) != codes.Unavailable {
		t.Fatalf("no agent: %v, want UNAVAILABLE", err)
	}

	a := f.connect(hello("h1"))
	if w := a.next().GetWelcome(); w.GetCacheRetentionMs() != 86400*1000 {
		t.Fatalf("welcome = %v", w)
	}
	testkit.WaitFor(t, 5*time.Second, "h1 connected", func() bool { return f.mgr.Connected("hosts/h1") })
	type answer struct {
		inv *ferryv1.SourceInventory
		err error
	}
	for _, tc := range []struct {
		reply *agentv1.InventoryResponse
		code  codes.Code
	}{
		{&agentv1.InventoryResponse{Inventory: &ferryv1.SourceInventory{Vms: []*ferryv1.SourceVm{{Id: "vm1"}}}}, codes.OK},
		{&agentv1.InventoryResponse{Vms: []*ferryv1.SourceVm{{Id: "vm1"}}}, codes.OK},
		{&agentv1.InventoryResponse{Error: "no KVM source driver in this build"}, codes.FailedPrecondition},
	} {
		done := make(chan answer, 1)
		go func() {
			inv, err := f.mgr.SourceInventory(context.Background(), src, server)
			done <- answer{inv, err}
		}()
		req := a.next().GetInventoryRequest()
		if req.GetSecrets()["credentials/pw"] != "s3cret" || req.GetSource().GetName() != "sources/kvm1" {
			t.Fatalf("inventory request: source %s, %d secrets", req.GetSource().GetName(), len(req.GetSecrets()))
		}
		tc.reply.RequestId = req.GetRequestId()
		a.send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_InventoryResponse{InventoryResponse: tc.reply}})
		got := <-done
		if status.Code(got.err) != tc.code || (tc.code == codes.OK && got.inv.GetVms()[0].GetId() != "vm1") {
			t.Fatalf("SourceInventory = %v, %v; want %v", got.inv, got.err, tc.code)
		}
	}
}

// TestHostKeyObservedIsRecordedOnce: a source's host key is recorded from
// the agent running a job of the source, once; a key from a host that
// runs no job or sync of the source, or that is no SSH public key, is
// refused without ending the session.
func TestHostKeyObservedIsRecordedOnce(t *testing.T) {
	f := newFixture(t, Config{}, true)
	job := f.seedJob("hosts/h1", 1)
	first, second := sshKey(t), sshKey(t)
	other := f.connect(hello("h2"))
	other.next()
	a := f.connect(hello("h1"))
	a.next()
	observe := func(ag *agent, key string) {
		ag.send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_HostKeyObserved{HostKeyObserved: &agentv1.HostKeyObserved{
			Source: "sources/kvm1", HostKey: key}}})
	}
	// Nobody runs the job yet: no host may report the source's key.
	observe(a, first)
	f.start(job, "hosts/h1", 1)
	observe(other, second) // h2 runs nothing of the source
	observe(a, "ssh-ed25519 AAAAnot-a-key")
	observe(a, first+" comment")
	observe(a, second)
	testkit.WaitFor(t, 5*time.Second, "first host key recorded", func() bool {
		s, _ := f.ledger.Source("sources/kvm1")
		return s.GetKvm().GetObservedHostKey() != ""
	})
	// The refused keys do not end the session.
	a.send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Heartbeat{Heartbeat: &agentv1.Heartbeat{}}})
	if !f.mgr.Connected("h1") || !f.mgr.Connected("h2") {
		t.Fatal("a session ended")
	}
	if s, _ := f.ledger.Source("sources/kvm1"); s.GetKvm().GetObservedHostKey() != first {
		t.Fatalf("recorded %q, want the first key of the job's host %q", s.GetKvm().GetObservedHostKey(), first)
	}
}

// sshKey returns a new ed25519 public key in authorized_keys form.
func sshKey(t *testing.T) string {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
}
