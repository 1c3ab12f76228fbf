package session

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
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
	waitFor(t, "h1 connected", func() bool { return f.mgr.Connected("hosts/h1") })
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

func TestHostKeyObservedIsRecordedOnce(t *testing.T) {
	f := newFixture(t, Config{}, true)
	f.seedJob("hosts/h1", 1)
	a := f.connect(hello("h1"))
	a.next()
	for _, key := range []string{"ssh-ed25519 AAAAfirst", "ssh-ed25519 AAAAsecond"} {
		a.send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_HostKeyObserved{HostKeyObserved: &agentv1.HostKeyObserved{
			Source: "sources/kvm1", HostKey: key}}})
	}
	waitFor(t, "first host key recorded", func() bool {
		s, _ := f.ledger.Source("sources/kvm1")
		return s.GetKvm().GetObservedHostKey() == "ssh-ed25519 AAAAfirst"
	})
	// The refused second key does not end the session.
	a.send(&agentv1.ConnectRequest{Kind: &agentv1.ConnectRequest_Heartbeat{Heartbeat: &agentv1.Heartbeat{}}})
	if !f.mgr.Connected("h1") {
		t.Fatal("session ended")
	}
}
