package api_test

import (
	"context"
	"crypto/sha1"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi/object"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/ferry-v2v/ferry/agent/agenttest"
	"github.com/ferry-v2v/ferry/coordinator/internal/testcluster"
	"github.com/ferry-v2v/ferry/pkg/client"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// vmwareWorld is a coordinator cluster, a vcsim vCenter registered as a
// source, and an in-process agent with the real VMware driver serving as
// the vmware migration server.
type vmwareWorld struct {
	t      *testing.T
	c      *testcluster.Cluster
	cl     *client.Client
	sim    *agenttest.VCSim
	agent  *agenttest.Agent
	source string
	server string
}

func newVMwareWorld(t *testing.T, nodes int, tweak func(*agenttest.VCSim)) *vmwareWorld {
	t.Helper()
	w := &vmwareWorld{t: t, c: testcluster.Start(t, nodes), sim: agenttest.StartVCSim(t)}
	if tweak != nil {
		tweak(w.sim)
	}
	var addrs []string
	for _, n := range w.c.Nodes() {
		addrs = append(addrs, n.Addr())
	}
	cl, err := client.New(context.Background(), client.Options{Addresses: addrs, TLSDir: w.c.TLSDir, Timeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Close() })
	w.cl = cl
	creds := w.c.AgentCredentials("vmw1")
	w.agent = agenttest.Start(t, agenttest.Options{Coordinators: addrs, HostName: "vmw1", Credentials: creds, VMware: true,
		Logger: testcluster.Logger(t)})
	ctx := testcluster.Ctx(t, 30*time.Second)
	testcluster.Eventually(t, 10*time.Second, "the agent's host is registered", func() bool {
		h, err := cl.TargetInventory().GetHost(ctx, &ferryv1.GetHostRequest{Name: "hosts/vmw1"})
		return err == nil && h.GetConnected()
	})
	ms, err := cl.MigrationServers().CreateMigrationServer(ctx, &ferryv1.CreateMigrationServerRequest{MigrationServer: &ferryv1.MigrationServer{
		Name: "migrationServers/vmw", Host: "hosts/vmw1", Type: ferryv1.Platform_PLATFORM_VMWARE, CachePath: t.TempDir()}})
	if err != nil {
		t.Fatal(err)
	}
	w.server = ms.GetName()
	w.source = w.createSource(ctx)
	return w
}

func (w *vmwareWorld) createSource(ctx context.Context) string {
	cr, err := w.cl.Sources().CreateCredential(ctx, &ferryv1.CreateCredentialRequest{Credential: &ferryv1.Credential{
		Type: ferryv1.CredentialType_CREDENTIAL_TYPE_PASSWORD, Secret: w.sim.Password()}})
	if err != nil {
		w.t.Fatal(err)
	}
	port, _ := strconv.Atoi(w.sim.Port())
	sum := sha1.Sum(w.sim.Server.Certificate().Raw)
	s, err := w.cl.Sources().CreateSource(ctx, &ferryv1.CreateSourceRequest{Source: &ferryv1.Source{
		Name: "sources/vc", Type: ferryv1.Platform_PLATFORM_VMWARE, Vcenter: &ferryv1.VCenterConnection{
			Address: w.sim.Address(), Port: int32(port), User: w.sim.User(), Credential: cr.GetName(),
			Thumbprint: fmt.Sprintf("%x", sum[:])}}})
	if err != nil {
		w.t.Fatal(err)
	}
	return s.GetName()
}

func (w *vmwareWorld) objects(kind ferryv1.SourceObjectKind, mod func(*ferryv1.ListSourceInventoryRequest)) *ferryv1.ListSourceInventoryResponse {
	w.t.Helper()
	req := &ferryv1.ListSourceInventoryRequest{Source: w.source, Kind: kind}
	if mod != nil {
		mod(req)
	}
	resp, err := w.cl.Sources().ListSourceInventory(testcluster.Ctx(w.t, 10*time.Second), req)
	if err != nil {
		w.t.Fatalf("ListSourceInventory: %v", err)
	}
	return resp
}

func (w *vmwareWorld) hostObject(name string) *ferryv1.SourceHost {
	w.t.Helper()
	for _, o := range w.objects(ferryv1.SourceObjectKind_SOURCE_OBJECT_KIND_HOST, nil).GetObjects() {
		if o.GetHost().GetName() == name {
			return o.GetHost()
		}
	}
	w.t.Fatalf("no host %s in the inventory", name)
	return nil
}

func (w *vmwareWorld) vms(req *ferryv1.ListSourceVMsRequest) []string {
	w.t.Helper()
	req.Source = w.source
	var names []string
	for {
		resp, err := w.cl.Sources().ListSourceVMs(testcluster.Ctx(w.t, 10*time.Second), req)
		if err != nil {
			w.t.Fatalf("ListSourceVMs(%v): %v", req, err)
		}
		for _, vm := range resp.GetVms() {
			names = append(names, vm.GetName())
		}
		if req.PageToken = resp.GetNextPageToken(); req.PageToken == "" {
			return names
		}
	}
}

// TestVMwareInventorySync registers vcsim, whose first sync happens on
// registration, checks what the ledger holds, sees a periodic sync pick
// up a change, then lists with filters with the agent gone and after the
// leader is killed.
func TestVMwareInventorySync(t *testing.T) {
	w := newVMwareWorld(t, 3, nil)
	ctx := testcluster.Ctx(t, 60*time.Second)
	testcluster.Eventually(t, 15*time.Second, "the first sync is recorded", func() bool {
		s, err := w.cl.Sources().GetSource(ctx, &ferryv1.GetSourceRequest{Name: w.source})
		return err == nil && s.GetLastSyncTime() != nil
	})
	s, _ := w.cl.Sources().GetSource(ctx, &ferryv1.GetSourceRequest{Name: w.source})
	if p := s.GetProduct(); p.GetVersion() != w.sim.VCenterVersion() || p.GetApiType() != "VirtualCenter" || s.GetLastSyncError() != "" {
		t.Fatalf("source after sync: %v", s)
	}
	all := w.objects(ferryv1.SourceObjectKind_SOURCE_OBJECT_KIND_UNSPECIFIED, nil)
	counts := map[ferryv1.SourceObjectKind]int{}
	for _, o := range all.GetObjects() {
		counts[o.GetKind()]++
	}
	want := map[ferryv1.SourceObjectKind]int{
		ferryv1.SourceObjectKind_SOURCE_OBJECT_KIND_DATACENTER: len(w.sim.Model.Map().All("Datacenter")),
		ferryv1.SourceObjectKind_SOURCE_OBJECT_KIND_CLUSTER:    len(w.sim.Model.Map().All("ClusterComputeResource")),
		ferryv1.SourceObjectKind_SOURCE_OBJECT_KIND_HOST:       len(w.sim.Hosts()),
		ferryv1.SourceObjectKind_SOURCE_OBJECT_KIND_NETWORK:    len(w.sim.Model.Map().All("Network")) + len(w.sim.Model.Map().All("DistributedVirtualPortgroup")),
		ferryv1.SourceObjectKind_SOURCE_OBJECT_KIND_DATASTORE:  len(w.sim.Model.Map().All("Datastore")),
	}
	for k, n := range want {
		if counts[k] != n || n == 0 {
			t.Errorf("%d %s objects, vcsim has %d", counts[k], k, n)
		}
	}
	if h := w.hostObject("DC0_C0_H1"); h.GetMaintenanceMode() || h.GetCluster() != "DC0_C0" || h.GetVersion() != w.sim.Host(t, "DC0_C0_H1").Summary.Config.Product.Version {
		t.Fatalf("host before maintenance: %v", h)
	}

	// The periodic sync picks up a host put into maintenance mode.
	first := all.GetSyncTime().AsTime()
	if _, err := w.cl.Settings().UpdateSettings(ctx, &ferryv1.UpdateSettingsRequest{Settings: &ferryv1.Settings{
		InventorySyncInterval: durationpb.New(time.Second)}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"inventory_sync_interval"}}}); err != nil {
		t.Fatal(err)
	}
	vc := w.sim.Client(ctx, t)
	if _, err := object.NewHostSystem(vc.Client, w.sim.Host(t, "DC0_C0_H1").Self).EnterMaintenanceMode(ctx, 0, false, nil); err != nil {
		t.Fatal(err)
	}
	testcluster.Eventually(t, 15*time.Second, "a periodic sync records the host in maintenance mode", func() bool {
		return w.hostObject("DC0_C0_H1").GetMaintenanceMode()
	})
	if now := w.objects(ferryv1.SourceObjectKind_SOURCE_OBJECT_KIND_HOST, nil).GetSyncTime().AsTime(); !now.After(first) {
		t.Errorf("sync time %v did not move past %v", now, first)
	}

	// Without any agent, listings come from the ledger.
	w.agent.Stop()
	checkListings(t, w)
	if _, err := w.cl.Sources().ListSourceVMs(ctx, &ferryv1.ListSourceVMsRequest{Source: w.source, Refresh: true}); status.Code(err) != codes.FailedPrecondition ||
		!strings.Contains(err.Error(), "no enabled vmware migration server has a connected agent") {
		t.Errorf("refresh without an agent: %v", err)
	}
	leader := w.c.Leader(10 * time.Second)
	w.c.Kill(leader)
	w.c.Leader(15 * time.Second)
	for _, n := range w.c.Nodes() {
		if !n.Alive() {
			continue
		}
		one, err := client.New(ctx, client.Options{Addresses: []string{n.Addr()}, TLSDir: w.c.TLSDir, Timeout: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer one.Close()
		resp, err := one.Sources().ListSourceVMs(ctx, &ferryv1.ListSourceVMsRequest{Source: w.source, Host: "DC0_H0"})
		if err != nil || len(resp.GetVms()) != 2 {
			t.Errorf("node %s after the leader died: %v, %v", n.Name, resp.GetVms(), err)
		}
	}
	checkListings(t, w)
}

// checkListings checks each filter against what vcsim holds: two VMs on
// the standalone host DC0_H0, two in cluster DC0_C0, all powered on.
func checkListings(t *testing.T, w *vmwareWorld) {
	t.Helper()
	total := len(w.sim.Model.Map().All("VirtualMachine"))
	for _, tc := range []struct {
		name string
		req  *ferryv1.ListSourceVMsRequest
		want int
	}{
		{"all, two per page", &ferryv1.ListSourceVMsRequest{PageSize: 2}, total},
		{"name", &ferryv1.ListSourceVMsRequest{NameContains: "h0_vm"}, 2},
		{"host", &ferryv1.ListSourceVMsRequest{Host: "DC0_H0"}, 2},
		{"cluster", &ferryv1.ListSourceVMsRequest{Cluster: "DC0_C0"}, total - 2},
		{"datacenter", &ferryv1.ListSourceVMsRequest{Datacenter: "DC0"}, total},
		{"other datacenter", &ferryv1.ListSourceVMsRequest{Datacenter: "DC9"}, 0},
		{"running", &ferryv1.ListSourceVMsRequest{State: ferryv1.SourceVmState_SOURCE_VM_STATE_RUNNING}, total},
		{"shut off", &ferryv1.ListSourceVMsRequest{State: ferryv1.SourceVmState_SOURCE_VM_STATE_SHUT_OFF}, 0},
		{"templates", &ferryv1.ListSourceVMsRequest{Template: proto.Bool(true)}, 0},
		{"not templates", &ferryv1.ListSourceVMsRequest{Template: proto.Bool(false)}, total},
	} {
		if got := w.vms(tc.req); len(got) != tc.want {
			t.Errorf("%s: %v, want %d VMs", tc.name, got, tc.want)
		}
	}
	dvpg := w.objects(ferryv1.SourceObjectKind_SOURCE_OBJECT_KIND_NETWORK, func(r *ferryv1.ListSourceInventoryRequest) { r.NameContains = "dvpg" })
	if len(dvpg.GetObjects()) == 0 {
		t.Error("no distributed portgroup matches dvpg")
	}
	for _, o := range dvpg.GetObjects() {
		if o.GetNetwork().GetType() != ferryv1.SourceNetworkType_SOURCE_NETWORK_TYPE_DISTRIBUTED {
			t.Errorf("network %v", o.GetNetwork())
		}
	}
	hosts := w.objects(ferryv1.SourceObjectKind_SOURCE_OBJECT_KIND_HOST, func(r *ferryv1.ListSourceInventoryRequest) { r.Cluster = "DC0_C0"; r.PageSize = 1 })
	if len(hosts.GetObjects()) != 1 || hosts.GetNextPageToken() == "" || hosts.GetObjects()[0].GetHost().GetCluster() != "DC0_C0" {
		t.Errorf("first page of cluster hosts: %v", hosts)
	}
	ds := w.objects(ferryv1.SourceObjectKind_SOURCE_OBJECT_KIND_DATASTORE, nil).GetObjects()
	if len(ds) == 0 || ds[0].GetDatastore().GetCapacityBytes() <= 0 || ds[0].GetDatastore().GetFreeBytes() > ds[0].GetDatastore().GetCapacityBytes() {
		t.Errorf("datastores %v", ds)
	}
}
