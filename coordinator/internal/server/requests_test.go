package server_test

import (
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ferry-v2v/ferry/agent/agenttest"
	"github.com/ferry-v2v/ferry/coordinator/internal/testcluster"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// TestRequestIDSurvivesLeaderChange: requests made with a request_id on
// one leader, repeated to the next one after the first was killed, are
// answered from the replicated record: a late SetMigrationServerBandwidth
// or DisableMigrationServer repeat does not undo the changes made since,
// AddVoter repeats answer the same members, and the request_id cannot be
// used for another method.
func TestRequestIDSurvivesLeaderChange(t *testing.T) {
	c := testcluster.Start(t, 3)
	c.WaitMembers(3, 15*time.Second)
	leader := c.Leader(10 * time.Second)
	var addrs []string
	for _, n := range c.Nodes() {
		addrs = append(addrs, n.Addr())
	}
	const host = "rq-kvm-1"
	agenttest.Start(t, agenttest.Options{Coordinators: addrs, HostName: host, Credentials: c.AgentCredentials(host),
		CacheTotal: 100 << 30, CacheFree: 50 << 30, Logger: c.Log})
	testcluster.Eventually(t, 60*time.Second, host+" is registered", func() bool {
		_, ok := leader.Server.Ledger().Host("hosts/" + host)
		return ok
	})

	servers := ferryv1.NewMigrationServerServiceClient(c.Dial(leader.Addr()))
	ctx := testcluster.Ctx(t, 60*time.Second)
	ms, err := servers.CreateMigrationServer(ctx, &ferryv1.CreateMigrationServerRequest{MigrationServer: &ferryv1.MigrationServer{
		Name: "migrationServers/rq", Host: "hosts/" + host, Type: ferryv1.Platform_PLATFORM_KVM, CachePath: "/var/cache/ferry-rq"}})
	if err != nil {
		t.Fatal(err)
	}
	name := ms.GetName()
	setBW := func(cl ferryv1.MigrationServerServiceClient, id, up string) (*ferryv1.MigrationServer, error) {
		r, err := cl.SetMigrationServerBandwidth(ctx, &ferryv1.SetMigrationServerBandwidthRequest{Name: name, UpstreamBandwidth: proto.String(up), RequestId: id})
		return r.GetMigrationServer(), err
	}
	disable := func(cl ferryv1.MigrationServerServiceClient, id string) (*ferryv1.MigrationServer, error) {
		r, err := cl.DisableMigrationServer(ctx, &ferryv1.DisableMigrationServerRequest{Name: name, RequestId: id})
		return r.GetMigrationServer(), err
	}
	if _, err := setBW(servers, "bw-1", "100Mbps"); err != nil {
		t.Fatal(err)
	}
	if _, err := disable(servers, "dis-1"); err != nil {
		t.Fatal(err)
	}
	// Changes made since, without request_id.
	if _, err := setBW(servers, "", "200Mbps"); err != nil {
		t.Fatal(err)
	}
	if _, err := servers.EnableMigrationServer(ctx, &ferryv1.EnableMigrationServerRequest{Name: name}); err != nil {
		t.Fatal(err)
	}

	// AddVoter of a member that is one already, without a request_id and
	// with one: the configuration does not change.
	membership := ferryv1.NewMembershipServiceClient(c.Dial(leader.Addr()))
	list, err := membership.ListMembers(ctx, &ferryv1.ListMembersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var follower *ferryv1.Member
	for _, m := range list.GetMembers() {
		if !m.GetLeader() {
			follower = m
			break
		}
	}
	add := func(cl ferryv1.MembershipServiceClient, id string) string {
		t.Helper()
		r, err := cl.AddVoter(ctx, &ferryv1.AddVoterRequest{Id: follower.GetId(), RaftAddress: follower.GetRaftAddress(),
			ApiAddress: follower.GetApiAddress(), RequestId: id})
		if err != nil {
			t.Fatalf("AddVoter %s again: %v", follower.GetId(), err)
		}
		return membersOf(r.GetMembers())
	}
	want := membersOf(list.GetMembers())
	for _, id := range []string{"", "", "add-1"} {
		if got := add(membership, id); got != want {
			t.Fatalf("AddVoter of member %s (request_id %q) answered %s; before it: %s", follower.GetId(), id, got, want)
		}
	}

	c.Kill(leader)
	next := c.Leader(15 * time.Second)
	t.Logf("leader %s killed, %s leads", leader.Name, next.Name)
	// The repeats go through every live node: each must know the new
	// leader first (a follower still campaigning answers "no leader
	// elected yet", seen under CI's load).
	testcluster.Eventually(t, 15*time.Second, "every live node to know "+next.Name+" leads", func() bool {
		for _, n := range c.Nodes() {
			if n.Alive() && n.Server.Node().LeaderAPIAddress() != next.Server.Node().LeaderAPIAddress() {
				return false
			}
		}
		return true
	})
	for _, n := range c.Nodes() {
		if !n.Alive() {
			continue
		}
		// Through the new leader, and through a follower that forwards.
		cl := ferryv1.NewMigrationServerServiceClient(c.Dial(n.Addr()))
		for _, repeat := range []func() (*ferryv1.MigrationServer, error){
			func() (*ferryv1.MigrationServer, error) { return setBW(cl, "bw-1", "100Mbps") },
			func() (*ferryv1.MigrationServer, error) { return disable(cl, "dis-1") },
		} {
			ms, err := repeat()
			if err != nil {
				t.Fatalf("repeat through %s: %v", n.Name, err)
			}
			if ms.GetUpstreamBandwidth() != "200Mbps" || !ms.GetEnabled() {
				t.Fatalf("repeat through %s answered upstream %s, enabled %v; want 200Mbps and enabled (the changes made since)",
					n.Name, ms.GetUpstreamBandwidth(), ms.GetEnabled())
			}
		}
		if got := add(ferryv1.NewMembershipServiceClient(c.Dial(n.Addr())), "add-1"); got != want {
			t.Fatalf("AddVoter repeat through %s answered %s, want %s", n.Name, got, want)
		}
	}
	for _, n := range c.Nodes() {
		if !n.Alive() {
			continue
		}
		testcluster.Eventually(t, 10*time.Second, n.Name+" holds the state from before the repeats", func() bool {
			ms, ok := n.Server.Ledger().MigrationServer(name)
			return ok && ms.GetUpstreamBandwidth() == "200Mbps" && ms.GetEnabled()
		})
	}

	_, err = disable(ferryv1.NewMigrationServerServiceClient(c.Dial(next.Addr())), "bw-1")
	st := status.Convert(err)
	if wantMsg := fmt.Sprintf(`request_id: "bw-1" was already used by SetMigrationServerBandwidth on %s`, name); st.Code() != codes.InvalidArgument || st.Message() != wantMsg {
		t.Fatalf("reused request_id: %v %q, want INVALID_ARGUMENT %q", st.Code(), st.Message(), wantMsg)
	}
}

func membersOf(ms []*ferryv1.Member) string {
	out := ""
	for _, m := range ms {
		out += fmt.Sprintf("%s(%s, voter %v) ", m.GetId(), m.GetRaftAddress(), m.GetVoter())
	}
	return out
}
