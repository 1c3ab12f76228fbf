package api

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

func reused(id, by string) string {
	return fmt.Sprintf("request_id: %q was already used by %s", id, by)
}

// TestRepeatedJobRequests: a repeated Cancel or Restart answers the job
// without changing it again; the request_id of one cannot serve another.
func TestRepeatedJobRequests(t *testing.T) {
	e := newEnv(t, true)
	e.seed()
	c := ctx(t)
	name := must[*ferryv1.CreateMigrationJobsResponse](t)(e.jobs.CreateMigrationJobs(c, jobsReq(1))).GetJobs()[0].GetName()
	cancel := func(id, reason string) (*ferryv1.MigrationJob, error) {
		r, err := e.jobs.CancelMigrationJob(c, &ferryv1.CancelMigrationJobRequest{Name: name, Reason: reason, RequestId: id})
		return r.GetJob(), err
	}
	must[*ferryv1.MigrationJob](t)(cancel("cancel-1", "wrong VM"))
	j := must[*ferryv1.MigrationJob](t)(cancel("cancel-1", "another reason"))
	if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_CANCELLED || j.GetReason() != "wrong VM" {
		t.Fatalf("repeated cancel answered %v (%q), want the job CANCELLED for %q", j.GetState(), j.GetReason(), "wrong VM")
	}
	_, err := cancel("", "")
	wantCode(t, err, codes.FailedPrecondition, "name: job "+name+" is already MIGRATION_JOB_STATE_CANCELLED")

	restart := func(job, id string) (*ferryv1.MigrationJob, error) {
		r, err := e.jobs.RestartMigrationJob(c, &ferryv1.RestartMigrationJobRequest{Name: job, RequestId: id})
		return r.GetJob(), err
	}
	if j := must[*ferryv1.MigrationJob](t)(restart(name, "restart-1")); j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_QUEUED {
		t.Fatalf("restart gave %v", j.GetState())
	}
	// It runs and fails again; the late repeat must not queue it a second time.
	e.startJob(name, 1)
	e.finishJob(name, ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED)
	j = must[*ferryv1.MigrationJob](t)(restart(name, "restart-1"))
	got := must[*ferryv1.MigrationJob](t)(e.jobs.GetMigrationJob(c, &ferryv1.GetMigrationJobRequest{Name: name}))
	for _, j := range []*ferryv1.MigrationJob{j, got} {
		if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED || j.GetAttempt() != 1 || j.GetEpoch() != 1 {
			t.Fatalf("after the repeated restart the job is %v, attempt %d, epoch %d; want FAILED, 1, 1 (restarted once)",
				j.GetState(), j.GetAttempt(), j.GetEpoch())
		}
	}

	// A new request_id is a new request.
	if j := must[*ferryv1.MigrationJob](t)(restart(name, "restart-2")); j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_QUEUED {
		t.Fatalf("restart with a new request_id gave %v", j.GetState())
	}

	_, err = cancel("restart-1", "")
	wantCode(t, err, codes.InvalidArgument, reused("restart-1", "RestartMigrationJob on "+name))
	other := must[*ferryv1.CreateMigrationJobsResponse](t)(e.jobs.CreateMigrationJobs(c, jobsReqWith(func(r *ferryv1.CreateMigrationJobsRequest) {
		r.Jobs[0].SourceVm, r.Jobs[0].Target.VmName = "vm-other", "target-other"
	}))).GetJobs()[0].GetName()
	_, err = restart(other, "restart-1")
	wantCode(t, err, codes.InvalidArgument, reused("restart-1", "RestartMigrationJob on "+name))
	_, err = e.jobs.CreateMigrationJobs(c, jobsReqWith(func(r *ferryv1.CreateMigrationJobsRequest) { r.RequestId = "cancel-1" }))
	wantCode(t, err, codes.InvalidArgument, reused("cancel-1", "CancelMigrationJob on "+name))
	_, err = restart(name, strings.Repeat("r", 129))
	wantCode(t, err, codes.InvalidArgument, "request_id: at most 128 characters, got 129")
}

// TestRepeatedServerRequests: a late repeat of SetMigrationServerBandwidth
// or DisableMigrationServer does not roll back what changed since.
func TestRepeatedServerRequests(t *testing.T) {
	e := newEnv(t, true)
	e.seed()
	c := ctx(t)
	const name = "migrationServers/kvm"
	setBW := func(id, up string) (*ferryv1.MigrationServer, error) {
		r, err := e.servers.SetMigrationServerBandwidth(c, &ferryv1.SetMigrationServerBandwidthRequest{Name: name, UpstreamBandwidth: proto.String(up), RequestId: id})
		return r.GetMigrationServer(), err
	}
	must[*ferryv1.MigrationServer](t)(setBW("bw-1", "100Mbps"))
	must[*ferryv1.MigrationServer](t)(setBW("", "200Mbps"))
	ms := must[*ferryv1.MigrationServer](t)(setBW("bw-1", "100Mbps"))
	got := must[*ferryv1.MigrationServer](t)(e.servers.GetMigrationServer(c, &ferryv1.GetMigrationServerRequest{Name: name}))
	for _, ms := range []*ferryv1.MigrationServer{ms, got} {
		if ms.GetUpstreamBandwidth() != "200Mbps" || ms.GetUpstreamBitsPerSecond() != 200_000_000 {
			t.Fatalf("after the repeat the limit is %s (%d b/s); want 200Mbps: the repeat rolled back the later change",
				ms.GetUpstreamBandwidth(), ms.GetUpstreamBitsPerSecond())
		}
	}

	disable := func(server, id string) (*ferryv1.MigrationServer, error) {
		r, err := e.servers.DisableMigrationServer(c, &ferryv1.DisableMigrationServerRequest{Name: server, RequestId: id})
		return r.GetMigrationServer(), err
	}
	enable := func(id string) (*ferryv1.MigrationServer, error) {
		r, err := e.servers.EnableMigrationServer(c, &ferryv1.EnableMigrationServerRequest{Name: name, RequestId: id})
		return r.GetMigrationServer(), err
	}
	if ms := must[*ferryv1.MigrationServer](t)(disable(name, "dis-1")); ms.GetEnabled() {
		t.Fatal("still enabled")
	}
	must[*ferryv1.MigrationServer](t)(enable("en-1"))
	ms = must[*ferryv1.MigrationServer](t)(disable(name, "dis-1"))
	got = must[*ferryv1.MigrationServer](t)(e.servers.GetMigrationServer(c, &ferryv1.GetMigrationServerRequest{Name: name}))
	if !ms.GetEnabled() || !got.GetEnabled() {
		t.Fatalf("the repeated disable disabled the server again (answer enabled=%v, stored enabled=%v)", ms.GetEnabled(), got.GetEnabled())
	}

	_, err := enable("dis-1")
	wantCode(t, err, codes.InvalidArgument, reused("dis-1", "DisableMigrationServer on "+name))
	_, err = disable("migrationServers/vmw", "dis-1")
	wantCode(t, err, codes.InvalidArgument, reused("dis-1", "DisableMigrationServer on "+name))
	_, err = setBW("en-1", "1Gbps")
	wantCode(t, err, codes.InvalidArgument, reused("en-1", "EnableMigrationServer on "+name))
	req := validServer(func(m *ferryv1.MigrationServer) { m.Name = "migrationServers/other" })
	req.RequestId = "bw-1"
	_, err = e.servers.CreateMigrationServer(c, req)
	wantCode(t, err, codes.InvalidArgument, reused("bw-1", "SetMigrationServerBandwidth on "+name))
	// A create's request_id cannot serve a custom method either.
	req.RequestId = "create-1"
	must[*ferryv1.MigrationServer](t)(e.servers.CreateMigrationServer(c, req))
	_, err = disable(name, "create-1")
	wantCode(t, err, codes.InvalidArgument, reused("create-1", "a create of migrationServers/other"))
}

// TestRepeatedReleaseAndRevoke: a repeated release answers the network
// instead of refusing an address no longer reserved; a repeated revoke
// answers the entry.
func TestRepeatedReleaseAndRevoke(t *testing.T) {
	e := newEnv(t, true)
	e.seed()
	c := ctx(t)
	for i, vm := range []string{"vm-a", "vm-b"} {
		job := must[*ferryv1.CreateMigrationJobsResponse](t)(e.jobs.CreateMigrationJobs(c, jobsReqWith(func(r *ferryv1.CreateMigrationJobsRequest) {
			r.Jobs[0].SourceVm, r.Jobs[0].Target.VmName = vm, fmt.Sprintf("target-%d", i)
		}))).GetJobs()[0]
		e.startJob(job.GetName(), 1)
		e.finishJob(job.GetName(), ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED)
		must[*emptypb.Empty](t)(e.jobs.DeleteMigrationJob(c, &ferryv1.DeleteMigrationJobRequest{Name: job.GetName()}))
	}
	release := func(ip, id string) (*ferryv1.L3Network, error) {
		r, err := e.inv.ReleaseL3NetworkAddress(c, &ferryv1.ReleaseL3NetworkAddressRequest{Name: "l3Networks/net1", Ip: ip, RequestId: id})
		return r.GetL3Network(), err
	}
	must[*ferryv1.L3Network](t)(release("10.0.0.2", "rel-1"))
	n := must[*ferryv1.L3Network](t)(release("10.0.0.2", "rel-1"))
	if rs := n.GetReservations(); len(rs) != 1 || rs[0].GetIp() != "10.0.0.3" {
		t.Fatalf("after the repeated release the network reserves %v; want 10.0.0.3 only", rs)
	}
	_, err := release("10.0.0.2", "")
	wantCode(t, err, codes.FailedPrecondition, "ip: l3Networks/net1 reserves no address 10.0.0.2")
	_, err = release("10.0.0.3", "rel-1")
	wantCode(t, err, codes.InvalidArgument, reused("rel-1", "ReleaseL3NetworkAddress on l3Networks/net1 address 10.0.0.2"))
	if rs := must[*ferryv1.L3Network](t)(e.inv.GetL3Network(c, &ferryv1.GetL3NetworkRequest{Name: "l3Networks/net1"})).GetReservations(); len(rs) != 1 {
		t.Fatalf("the refused reuse released %v", rs)
	}

	certs := ferryv1.NewCertificateServiceClient(e.dial(c))
	revoke := func(serial, id string) (*ferryv1.RevokedCertificate, error) {
		r, err := certs.RevokeCertificate(c, &ferryv1.RevokeCertificateRequest{Serial: serial, Reason: "laptop lost", RequestId: id})
		return r.GetRevokedCertificate(), err
	}
	first := must[*ferryv1.RevokedCertificate](t)(revoke("1F", "rv-1"))
	again := must[*ferryv1.RevokedCertificate](t)(revoke("1f", "rv-1"))
	if !proto.Equal(first, again) || first.GetName() != "revokedCertificates/1f" {
		t.Fatalf("repeat answered %v, first %v", again, first)
	}
	_, err = revoke("20", "rv-1")
	wantCode(t, err, codes.InvalidArgument, reused("rv-1", "RevokeCertificate on revokedCertificates/1f"))
	if l := must[*ferryv1.ListRevokedCertificatesResponse](t)(certs.ListRevokedCertificates(c, &ferryv1.ListRevokedCertificatesRequest{})); len(l.GetRevokedCertificates()) != 1 {
		t.Fatalf("revocation list %v", l.GetRevokedCertificates())
	}
}

// TestRepeatedMembershipRequests: AddVoter and RemoveVoter repeats answer
// the members; a late AddVoter repeat does not add back a node removed
// since, and a RemoveVoter repeat is not NOT_FOUND.
func TestRepeatedMembershipRequests(t *testing.T) {
	e := newEnv(t, true)
	c := ctx(t)
	ids := func(ms []*ferryv1.Member) string {
		var out []string
		for _, m := range ms {
			out = append(out, m.GetId())
		}
		return strings.Join(out, " ")
	}
	add := func(id string) (*ferryv1.AddVoterResponse, error) {
		return e.cluster.AddVoter(c, &ferryv1.AddVoterRequest{Id: "node-b", RaftAddress: "127.0.0.1:7001", ApiAddress: "127.0.0.1:7444", RequestId: id})
	}
	remove := func(node, id string) (*ferryv1.RemoveVoterResponse, error) {
		return e.cluster.RemoveVoter(c, &ferryv1.RemoveVoterRequest{Id: node, RequestId: id})
	}
	if got := ids(must[*ferryv1.AddVoterResponse](t)(add("add-b")).GetMembers()); got != "node-a node-b" {
		t.Fatalf("members after AddVoter: %s", got)
	}
	if got := ids(must[*ferryv1.RemoveVoterResponse](t)(remove("node-b", "rm-b")).GetMembers()); got != "node-a" {
		t.Fatalf("members after RemoveVoter: %s", got)
	}
	if got := ids(must[*ferryv1.AddVoterResponse](t)(add("add-b")).GetMembers()); got != "node-a" {
		t.Fatalf("the late AddVoter repeat added node-b back: %s", got)
	}
	if got := ids(must[*ferryv1.RemoveVoterResponse](t)(remove("node-b", "rm-b")).GetMembers()); got != "node-a" {
		t.Fatalf("members after the RemoveVoter repeat: %s", got)
	}
	if _, ok := e.ledger.Node("node-b"); ok {
		t.Fatal("node-b's addresses are recorded again")
	}
	_, err := remove("node-b", "")
	wantCode(t, err, codes.NotFound, `id: coordinator "node-b" not found`)
	_, err = remove("node-c", "rm-b")
	wantCode(t, err, codes.InvalidArgument, reused("rm-b", "RemoveVoter on node-b"))
}

// flakyInventory counts syncs and fails them while fail is set.
type flakyInventory struct {
	sourceVMs
	calls atomic.Int32
	fail  atomic.Bool
}

func (f *flakyInventory) SourceInventory(ctx context.Context, src *ferryv1.Source, ms *ferryv1.MigrationServer) (*ferryv1.SourceInventory, error) {
	f.calls.Add(1)
	if f.fail.Load() {
		return nil, status.Error(codes.FailedPrecondition, "vCenter refused the login")
	}
	return f.sourceVMs.SourceInventory(ctx, src, ms)
}

// TestRepeatedSyncSource: a repeat of a sync that succeeded does not
// sync again; a repeat of one that failed does.
func TestRepeatedSyncSource(t *testing.T) {
	inv := &flakyInventory{}
	e := newEnv(t, true, withAgents(inv))
	e.seed()
	c := ctx(t)
	sync := func(source, id string) (*ferryv1.Source, error) {
		r, err := e.sources.SyncSource(c, &ferryv1.SyncSourceRequest{Name: source, RequestId: id})
		return r.GetSource(), err
	}
	first := must[*ferryv1.Source](t)(sync("sources/vc", "sync-1"))
	again := must[*ferryv1.Source](t)(sync("sources/vc", "sync-1"))
	if n := inv.calls.Load(); n != 1 || !proto.Equal(first.GetLastSyncTime(), again.GetLastSyncTime()) || first.GetLastSyncTime() == nil {
		t.Fatalf("%d syncs, last_sync_time %v then %v; want 1 sync and the same time", n, first.GetLastSyncTime(), again.GetLastSyncTime())
	}
	_, err := sync("sources/kvm", "sync-1")
	wantCode(t, err, codes.InvalidArgument, reused("sync-1", "SyncSource on sources/vc"))

	inv.fail.Store(true)
	_, err = sync("sources/vc", "sync-2")
	wantCode(t, err, codes.FailedPrecondition, "vCenter refused the login")
	_, err = sync("sources/vc", "sync-2")
	wantCode(t, err, codes.FailedPrecondition, "vCenter refused the login")
	if n := inv.calls.Load(); n != 3 {
		t.Fatalf("%d syncs; the repeat of a failed sync must sync again", n)
	}
	inv.fail.Store(false)
	must[*ferryv1.Source](t)(sync("sources/vc", "sync-2"))
	src := must[*ferryv1.Source](t)(sync("sources/vc", "sync-2"))
	if n := inv.calls.Load(); n != 4 || src.GetLastSyncError() != "" || !src.GetLastSyncTime().AsTime().After(first.GetLastSyncTime().AsTime()) {
		t.Fatalf("%d syncs, source %v; want 4 and a clean, later sync", n, src)
	}
}

// TestSettingsETag: an update carrying the etag it read passes once; a
// second from the same read is ABORTED naming settings.etag and changes
// nothing; an empty etag is unconditional.
func TestSettingsETag(t *testing.T) {
	e := newEnv(t, true)
	c := ctx(t)
	read := must[*ferryv1.Settings](t)(e.settings.GetSettings(c, &ferryv1.GetSettingsRequest{}))
	if len(read.GetEtag()) != 32 {
		t.Fatalf("etag %q", read.GetEtag())
	}
	update := func(n int32, etag string) (*ferryv1.Settings, error) {
		return e.settings.UpdateSettings(c, &ferryv1.UpdateSettingsRequest{Settings: &ferryv1.Settings{JobParallelism: n, Etag: etag},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"job_parallelism"}}})
	}
	up := must[*ferryv1.Settings](t)(update(3, read.GetEtag()))
	if up.GetJobParallelism() != 3 || up.GetEtag() == read.GetEtag() || len(up.GetEtag()) != 32 {
		t.Fatalf("update answered %v", up)
	}
	_, err := update(4, read.GetEtag())
	wantCode(t, err, codes.Aborted, fmt.Sprintf("settings.etag: settings changed since etag %q was read (it is now %q); read it again and retry",
		read.GetEtag(), up.GetEtag()))
	if got := must[*ferryv1.Settings](t)(e.settings.GetSettings(c, &ferryv1.GetSettingsRequest{})); got.GetJobParallelism() != 3 || got.GetEtag() != up.GetEtag() {
		t.Fatalf("after the aborted update: %v", got)
	}
	if got := must[*ferryv1.Settings](t)(update(5, "")); got.GetJobParallelism() != 5 {
		t.Fatalf("unconditional update answered %v", got)
	}

	// Racing updates from one read: exactly one passes.
	read = must[*ferryv1.Settings](t)(e.settings.GetSettings(c, &ferryv1.GetSettingsRequest{}))
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = update(int32(10+i), read.GetEtag())
		}()
	}
	wg.Wait()
	passed := 0
	for _, err := range errs {
		switch status.Code(err) {
		case codes.OK:
			passed++
		case codes.Aborted:
		default:
			t.Fatalf("racing update: %v", err)
		}
	}
	if passed != 1 {
		t.Fatalf("%d of 4 racing updates from one read passed, want 1", passed)
	}
}

// TestNetworkMappingGroupETag: Get, List and Update show the etag; a stale
// one is ABORTED naming network_mapping_group.etag.
func TestNetworkMappingGroupETag(t *testing.T) {
	e := mappingEnv(t)
	c := ctx(t)
	const name = "networkMappingGroups/vc-map"
	g := must[*ferryv1.NetworkMappingGroup](t)(e.mappings.GetNetworkMappingGroup(c, &ferryv1.GetNetworkMappingGroupRequest{Name: name}))
	list := must[*ferryv1.ListNetworkMappingGroupsResponse](t)(e.mappings.ListNetworkMappingGroups(c, &ferryv1.ListNetworkMappingGroupsRequest{})).GetNetworkMappingGroups()
	if len(g.GetEtag()) != 32 || len(list) != 1 || list[0].GetEtag() != g.GetEtag() {
		t.Fatalf("etag %q, listed %v", g.GetEtag(), list)
	}
	update := func(display, etag string) (*ferryv1.NetworkMappingGroup, error) {
		return e.mappings.UpdateNetworkMappingGroup(c, &ferryv1.UpdateNetworkMappingGroupRequest{
			NetworkMappingGroup: &ferryv1.NetworkMappingGroup{Name: name, DisplayName: display, Etag: etag},
			UpdateMask:          &fieldmaskpb.FieldMask{Paths: []string{"display_name"}}})
	}
	up := must[*ferryv1.NetworkMappingGroup](t)(update("first", g.GetEtag()))
	if up.GetDisplayName() != "first" || up.GetEtag() == g.GetEtag() {
		t.Fatalf("update answered %v", up)
	}
	_, err := update("second", g.GetEtag())
	wantCode(t, err, codes.Aborted, fmt.Sprintf("network_mapping_group.etag: network mapping group %s changed since etag %q was read (it is now %q)",
		name, g.GetEtag(), up.GetEtag()))
	if got := must[*ferryv1.NetworkMappingGroup](t)(e.mappings.GetNetworkMappingGroup(c, &ferryv1.GetNetworkMappingGroupRequest{Name: name})); got.GetDisplayName() != "first" {
		t.Fatalf("the aborted update changed the group: %v", got)
	}
	if got := must[*ferryv1.NetworkMappingGroup](t)(update("third", "")); got.GetDisplayName() != "third" {
		t.Fatalf("unconditional update answered %v", got)
	}
}
