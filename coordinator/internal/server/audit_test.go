package server_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/ferry-v2v/ferry/coordinator/internal/testcluster"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/tlsutil"
)

// mutating says, from the method's name alone and independently of the
// API's own rule, whether a ferry.v1 method may change something: all but
// the reads (Get, List, Watch, Preview).
func mutating(m method) bool {
	return strings.HasPrefix(m.service, "ferry.v1.") &&
		!slices.ContainsFunc([]string{"Get", "List", "Watch", "Preview"}, func(p string) bool { return strings.HasPrefix(m.short, p) })
}

// TestEveryMutatingMethodIsAudited calls every mutating method of every
// service the node serves (read from its descriptors, so a new method that
// is not audited fails here) and finds exactly one audit event of each,
// naming the caller's certificate identity and the call's result; reads
// leave none. A credential's creation is recorded by field names: its
// secret appears nowhere in the trail.
func TestEveryMutatingMethodIsAudited(t *testing.T) {
	c := testcluster.Start(t, 1)
	leader := c.Leader(10 * time.Second)
	ctx := testcluster.Ctx(t, 2*time.Minute)
	id := tlsutil.Identity{Role: tlsutil.RoleIDOperator, Name: "auditor"}
	conn := c.DialAs(leader.Addr(), id)
	var want []string
	for _, m := range servedMethods(t, leader) {
		if !mutating(m) {
			if strings.HasPrefix(m.service, "ferry.v1.") {
				_ = call(ctx, conn, m, nil) // a read: no event
			}
			continue
		}
		want = append(want, m.full)
		_ = call(ctx, conn, m, nil) // an empty request: refused, and audited all the same
	}
	const secret = "audit-test-secret-Zq8v1"
	cred, err := ferryv1.NewSourceServiceClient(conn).CreateCredential(ctx, &ferryv1.CreateCredentialRequest{Credential: &ferryv1.Credential{
		Type: ferryv1.CredentialType_CREDENTIAL_TYPE_PASSWORD, Secret: secret}})
	if err != nil {
		t.Fatal(err)
	}
	audit := ferryv1.NewAuditServiceClient(conn)
	var events []*ferryv1.AuditEvent
	for tok := ""; ; {
		resp, err := audit.ListAuditEvents(ctx, &ferryv1.ListAuditEventsRequest{Identity: id.String(), PageToken: tok, PageSize: 7})
		if err != nil {
			t.Fatal(err)
		}
		events = append(events, resp.GetAuditEvents()...)
		if tok = resp.GetNextPageToken(); tok == "" {
			break
		}
	}
	count := map[string]int{}
	for _, ev := range events {
		count[ev.GetMethod()]++
		if ev.GetIdentity() != id.String() || ev.GetResult() == "" || ev.GetTime() == nil {
			t.Errorf("event %v: want identity %s, a result and a time", ev, id)
		}
		js, _ := protojson.Marshal(ev)
		if strings.Contains(string(js), secret) {
			t.Errorf("event %s holds the credential's secret: %s", ev.GetName(), js)
		}
	}
	count["/ferry.v1.SourceService/CreateCredential"]-- // the one with a secret
	for _, m := range want {
		if count[m] != 1 {
			t.Errorf("%s left %d audit events of %s, want 1", m, count[m], id)
		}
		delete(count, m)
	}
	for m, n := range count {
		t.Errorf("%d audit events of %s, which is not a mutating method", n, m)
	}
	if len(want) < 20 {
		t.Fatalf("found %d mutating methods; the descriptors were not read", len(want))
	}
	// The credential's creation: named, with the field names it set.
	resp, err := audit.ListAuditEvents(ctx, &ferryv1.ListAuditEventsRequest{Resource: cred.GetName()})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetAuditEvents()) != 1 {
		t.Fatalf("events of %s: %v, want the one of its creation", cred.GetName(), resp.GetAuditEvents())
	}
	ev := resp.GetAuditEvents()[0]
	if ev.GetResult() != "OK" || ev.GetMethod() != "/ferry.v1.SourceService/CreateCredential" ||
		!slices.Contains(ev.GetFields(), "credential.secret") || !slices.Contains(ev.GetFields(), "credential.type") {
		t.Errorf("creation event %v: want OK, CreateCredential, fields credential.secret and credential.type", ev)
	}
	// A refused call keeps its code.
	resp, err = audit.ListAuditEvents(ctx, &ferryv1.ListAuditEventsRequest{Identity: id.String(), PageSize: 500})
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range resp.GetAuditEvents() {
		if ev.GetMethod() == "/ferry.v1.TargetInventoryService/CreateCluster" && ev.GetResult() != "INVALID_ARGUMENT" {
			t.Errorf("CreateCluster with an empty request recorded %s, want INVALID_ARGUMENT", ev.GetResult())
		}
	}
}

// TestAuditOfAForwardedCall: a write sent to a follower is forwarded to
// the leader, which records it once, naming the original caller; every
// node's ledger holds that one event.
func TestAuditOfAForwardedCall(t *testing.T) {
	if testing.Short() {
		t.Skip("three-node cluster")
	}
	c := testcluster.Start(t, 3)
	c.Leader(10 * time.Second)
	follower := c.Followers()[0]
	id := tlsutil.Identity{Role: tlsutil.RoleIDOperator, Name: "via-follower"}
	ctx := testcluster.Ctx(t, time.Minute)
	cl, err := ferryv1.NewTargetInventoryServiceClient(c.DialAs(follower.Addr(), id)).CreateCluster(ctx,
		&ferryv1.CreateClusterRequest{Cluster: &ferryv1.Cluster{DisplayName: "forwarded", Zone: "z1"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Nodes() {
		var evs []*ferryv1.AuditEvent
		testcluster.Eventually(t, 10*time.Second, n.Name+" applies the audit event", func() bool {
			resp, err := ferryv1.NewAuditServiceClient(c.Dial(n.Addr())).ListAuditEvents(ctx, &ferryv1.ListAuditEventsRequest{Identity: id.String()})
			evs = resp.GetAuditEvents()
			return err == nil && len(evs) > 0
		})
		if len(evs) != 1 || evs[0].GetResource() != cl.GetName() || evs[0].GetResult() != "OK" ||
			strings.Join(evs[0].GetFields(), ",") != "cluster.display_name,cluster.zone" {
			t.Errorf("%s: events of %s: %v; want one, OK, on %s, fields cluster.display_name,cluster.zone", n.Name, id, evs, cl.GetName())
		}
	}
}
