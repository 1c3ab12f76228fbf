package admission

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferry-v2v/ferry/coordinator/internal/capacity"
	"github.com/ferry-v2v/ferry/coordinator/internal/fsm"
	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	"github.com/ferry-v2v/ferry/coordinator/internal/validate"
	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

const gib = int64(1) << 30

// world is a ledger with cluster c1 (connected host kvm1), NFS storage,
// network net1 (10.0.0.1-10.0.0.20 in a /16, gateway 10.0.0.1), a KVM source and a
// KVM migration server on kvm1 whose cache path reports 100 GiB free.
type world struct {
	t      testing.TB
	fsm    *fsm.FSM
	ledger *ledger.Ledger
	adm    *Admission
	ids    int
}

// agents are kvm1's session, with its live facts.
type agents struct{ facts map[string]*ferryv1.HostFacts }

func (a agents) Connected(host string) bool           { return a.facts[host] != nil }
func (a agents) Hosts() map[string]*ferryv1.HostFacts { return a.facts }

func newWorld(t testing.TB) *world { return newWorldTo(t, "10.0.0.20") }

// newWorldTo is newWorld with net1's range ending at end.
func newWorldTo(t testing.TB, end string) *world {
	w := &world{t: t, ledger: ledger.New()}
	w.fsm = fsm.New(w.ledger, slog.New(slog.DiscardHandler))
	facts := &ferryv1.HostFacts{Cpus: 16, MemoryAvailableBytes: 64 * gib,
		Storages: []*ferryv1.StorageSpace{{Path: "/var/cache/ferry", FreeBytes: 100 * gib}, {Path: "/mnt/nfs", FreeBytes: 500 * gib}}}
	for _, cmd := range []*ledgerv1.Command{
		{Op: &ledgerv1.Command_PutCluster{PutCluster: &ledgerv1.PutCluster{Cluster: &ferryv1.Cluster{Name: "clusters/c1"}}}},
		{Op: &ledgerv1.Command_PutHost{PutHost: &ledgerv1.PutHost{Host: &ferryv1.Host{Name: "hosts/kvm1", Cluster: "clusters/c1", Connected: true, Facts: facts}}}},
		{Op: &ledgerv1.Command_PutPrimaryStorage{PutPrimaryStorage: &ledgerv1.PutPrimaryStorage{PrimaryStorage: &ferryv1.PrimaryStorage{
			Name: "primaryStorages/nfs", Cluster: "clusters/c1", Type: ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_NFS, Path: "/mnt/nfs"}}}},
		{Op: &ledgerv1.Command_PutL3Network{PutL3Network: &ledgerv1.PutL3Network{L3Network: &ferryv1.L3Network{
			Name: "l3Networks/net1", Cluster: "clusters/c1", Bridge: "br0",
			IpRangeStart: "10.0.0.1", IpRangeEnd: end, Gateway: "10.0.0.1", PrefixLength: 16}}}},
		{Op: &ledgerv1.Command_PutCredential{PutCredential: &ledgerv1.PutCredential{Credential: &ledgerv1.SealedCredential{
			Credential: &ferryv1.Credential{Name: "credentials/pw", Type: ferryv1.CredentialType_CREDENTIAL_TYPE_PASSWORD}}}}},
		{Op: &ledgerv1.Command_PutSource{PutSource: &ledgerv1.PutSource{Source: &ferryv1.Source{
			Name: "sources/kvm", Type: ferryv1.Platform_PLATFORM_KVM, Kvm: &ferryv1.KvmConnection{Address: "192.0.2.10", Credential: "credentials/pw"}}}}},
		{Op: &ledgerv1.Command_PutMigrationServer{PutMigrationServer: &ledgerv1.PutMigrationServer{MigrationServer: &ferryv1.MigrationServer{
			Name: "migrationServers/kvm", Host: "hosts/kvm1", Type: ferryv1.Platform_PLATFORM_KVM, CachePath: "/var/cache/ferry", Enabled: true}}}},
	} {
		w.apply(cmd)
	}
	w.adm = New(Deps{
		Ledger: w.ledger, Agents: agents{facts: map[string]*ferryv1.HostFacts{"hosts/kvm1": facts}},
		ReadSource: func(context.Context, string, string) (*ledgerv1.RecordSourceSync, error) {
			return nil, errors.New("no agent reads sources in this test")
		},
		Record: func(_ context.Context, cmd *ledgerv1.Command) error { w.apply(cmd); return nil },
		NewID:  func() string { w.ids++; return fmt.Sprintf("job-%d", w.ids) },
	})
	return w
}

func (w *world) apply(cmd *ledgerv1.Command) []string {
	w.t.Helper()
	cmd.Time = timestamppb.New(time.Unix(1700000000, 0))
	names, err := w.fsm.ApplyCommand(cmd)
	if err != nil {
		w.t.Fatalf("apply %v: %v", cmd, err)
	}
	return names
}

// request is a batch of n VMs with complete specs, from sources/kvm on
// migrationServers/kvm; their NICs leave the address to allocation.
func request(n int) *ferryv1.CreateMigrationJobsRequest {
	req := &ferryv1.CreateMigrationJobsRequest{Source: "sources/kvm", MigrationServer: "migrationServers/kvm"}
	for i := range n {
		req.Jobs = append(req.Jobs, &ferryv1.MigrationJobSpec{SourceVm: fmt.Sprintf("vm-%d", i), Target: &ferryv1.TargetVm{
			VmName: fmt.Sprintf("target-%d", i), Cluster: "clusters/c1", PrimaryStorage: "primaryStorages/nfs",
			Cpus: 2, MemoryBytes: 2 * gib, Disks: []*ferryv1.TargetDisk{{SourceDisk: "vda", SizeBytes: 10 * gib}},
			Nics: []*ferryv1.TargetNic{{SourceMac: fmt.Sprintf("52:54:00:00:00:%02x", i), L3Network: "l3Networks/net1"}},
		}})
	}
	return req
}

func addresses(cmd *ledgerv1.Command) []string {
	var out []string
	for _, j := range cmd.GetCreateMigrationJobs().GetJobs() {
		for _, n := range j.GetTarget().GetNics() {
			out = append(out, n.GetIp())
		}
	}
	return out
}

// TestCreateStampsNamesAndAddresses: the command names each job, copies
// the batch's source and server into it and gives each NIC the next free
// address (the gateway is skipped, the first batch's addresses are
// held), and the allocation lock is held until Release.
func TestCreateStampsNamesAndAddresses(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	ad, err := w.adm.Create(ctx, request(2))
	if err != nil {
		t.Fatal(err)
	}
	if w.adm.allocMu.TryLock() {
		t.Fatal("the allocation lock is free before Release")
	}
	jobs := ad.Command.GetCreateMigrationJobs().GetJobs()
	for i, j := range jobs {
		if want := fmt.Sprintf("migrationJobs/job-%d", i+1); j.GetName() != want || j.GetSource() != "sources/kvm" ||
			j.GetMigrationServer() != "migrationServers/kvm" || !j.GetOptions().GetAutoStart() || j.GetTarget().GetNics()[0].GetMac() == "" {
			t.Errorf("jobs[%d] = %v; want %s of sources/kvm on migrationServers/kvm, auto_start, MAC from source_mac", i, j, want)
		}
	}
	if got, want := addresses(ad.Command), []string{"10.0.0.2", "10.0.0.3"}; !slices.Equal(got, want) {
		t.Errorf("addresses = %v, want %v", got, want)
	}
	w.apply(ad.Command)
	ad.Release()
	ad, err = w.adm.Create(ctx, request(2))
	if err != nil {
		t.Fatal(err)
	}
	defer ad.Release()
	if got, want := addresses(ad.Command), []string{"10.0.0.4", "10.0.0.5"}; !slices.Equal(got, want) {
		t.Errorf("second batch: addresses = %v, want %v", got, want)
	}
}

// TestCreateRefusalsNameTheField: each kind of refusal is package
// validate's, about the field at fault, and releases nothing it did not
// take (the next create allocates).
func TestCreateRefusalsNameTheField(t *testing.T) {
	w := newWorld(t)
	for _, tc := range []struct {
		name   string
		edit   func(*ferryv1.CreateMigrationJobsRequest)
		code   codes.Code
		prefix string
	}{
		{"malformed cluster", func(r *ferryv1.CreateMigrationJobsRequest) { r.Jobs[0].Target.Cluster = "c1" },
			codes.InvalidArgument, "jobs[0].target.cluster: \"c1\" is not a clusters/{id} name"},
		{"unknown cluster", func(r *ferryv1.CreateMigrationJobsRequest) { r.Jobs[0].Target.Cluster = "clusters/c9" },
			codes.NotFound, "jobs[0].target.cluster: clusters/c9 not found"},
		{"address outside the range", func(r *ferryv1.CreateMigrationJobsRequest) { r.Jobs[0].Target.Nics[0].Ip = "10.0.1.1" },
			codes.InvalidArgument, "jobs[0].target.nics[0].ip: 10.0.1.1 is outside the range 10.0.0.1-10.0.0.20 of l3Networks/net1"},
		{"address given twice", func(r *ferryv1.CreateMigrationJobsRequest) {
			r.Jobs[0].Target.Nics[0].Ip, r.Jobs[1].Target.Nics[0].Ip = "10.0.0.9", "10.0.0.9"
		}, codes.InvalidArgument, "jobs[1].target.nics[0].ip: 10.0.0.9 on l3Networks/net1 is also given to jobs[0].target.nics[0].ip"},
		{"too many VMs", func(r *ferryv1.CreateMigrationJobsRequest) { r.Jobs = request(51).Jobs },
			codes.InvalidArgument, "jobs: at most 50 VMs per request, got 51; split the batch"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := request(2)
			tc.edit(req)
			ad, err := w.adm.Create(context.Background(), req)
			if err == nil {
				ad.Release()
			}
			var inv *validate.InvalidError
			var fe *validate.FieldError
			code := codes.OK
			switch {
			case errors.As(err, &inv):
				code = codes.InvalidArgument
			case errors.As(err, &fe):
				code = fe.Code
			}
			if code != tc.code || err == nil || !strings.HasPrefix(err.Error(), tc.prefix) {
				t.Fatalf("err = %v (%v), want %v %q", err, code, tc.code, tc.prefix)
			}
			if !w.adm.allocMu.TryLock() {
				t.Fatal("a refused create kept the allocation lock")
			}
			w.adm.allocMu.Unlock()
		})
	}
}

// TestPreviewCacheIsTheSchedulersRoom: the cache usage a preview shows is
// the room package capacity gives the scheduler: the cache path's free
// space less what the server's running jobs reserve.
func TestPreviewCacheIsTheSchedulersRoom(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	ad, err := w.adm.Create(ctx, request(1))
	if err != nil {
		t.Fatal(err)
	}
	name := w.apply(ad.Command)[0]
	ad.Release()
	w.apply(&ledgerv1.Command{Op: &ledgerv1.Command_StartMigrationJob{StartMigrationJob: &ledgerv1.StartMigrationJob{
		Name: name, Host: "hosts/kvm1", Epoch: 1}}})
	resp, err := w.adm.Preview(ctx, &ferryv1.PreviewMigrationJobsRequest{Source: "sources/kvm", MigrationServer: "migrationServers/kvm",
		Jobs: request(3).GetJobs()})
	if err != nil {
		t.Fatal(err)
	}
	srv, _ := w.ledger.MigrationServer("migrationServers/kvm")
	rooms := capacity.NewRooms(w.adm.agents.(agents).facts)
	rooms.ReserveRunning(w.ledger.Jobs(ledger.JobFilter{}))
	want := rooms.Room(srv)
	for _, u := range resp.GetUsages() {
		if u.GetKind() != ferryv1.PreviewResourceKind_PREVIEW_RESOURCE_KIND_CACHE_BYTES {
			continue
		}
		if !u.GetKnown() || u.GetAvailable() != want.Available() || u.GetAvailable() != 90*gib || u.GetRequested() != 30*gib || !u.GetFits() {
			t.Fatalf("cache usage = %v; want 30 GiB requested of %d available (the scheduler's room)", u, want.Available())
		}
		return
	}
	t.Fatalf("no cache usage in %v", resp.GetUsages())
}

// TestAllocationReusesFreedAddresses: allocation remembers where the held
// addresses end, yet still hands out the lowest free address once a job
// that held one is cancelled.
func TestAllocationReusesFreedAddresses(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	create := func(n int) ([]string, []string) {
		t.Helper()
		ad, err := w.adm.Create(ctx, request(n))
		if err != nil {
			t.Fatal(err)
		}
		defer ad.Release()
		return w.apply(ad.Command), addresses(ad.Command)
	}
	names, _ := create(3) // 10.0.0.2-4
	if _, got := create(1); !slices.Equal(got, []string{"10.0.0.5"}) {
		t.Fatalf("second batch: %v, want [10.0.0.5]", got)
	}
	w.apply(&ledgerv1.Command{Op: &ledgerv1.Command_CancelMigrationJob{CancelMigrationJob: &ledgerv1.CancelMigrationJob{Name: names[1]}}})
	if _, got := create(2); !slices.Equal(got, []string{"10.0.0.3", "10.0.0.6"}) {
		t.Fatalf("after cancelling the job of 10.0.0.3: %v, want [10.0.0.3 10.0.0.6]", got)
	}
	if _, got := create(1); !slices.Equal(got, []string{"10.0.0.7"}) {
		t.Fatalf("next batch: %v, want [10.0.0.7]", got)
	}
	if h := w.adm.heldPrefix["l3Networks/net1"]; h.end.String() != "10.0.0.7" {
		t.Errorf("held prefix ends at %v, want 10.0.0.7 (10.0.0.1 is the gateway, .2-.6 held)", h.end)
	}
}

// BenchmarkCreate50 admits and applies a batch of 50 VMs into a ledger
// holding 100 or 10,000 queued jobs on the same network: the admission
// path (checks, references, placement, allocation) and the ledger's
// apply, without Raft or gRPC. After each timed batch its jobs are
// cancelled and deleted, untimed, so the ledger stays at its size and
// each batch finds addresses freed since the one before. Goal (issue 11):
// the same cost at both sizes, within 20 %.
func BenchmarkCreate50(b *testing.B) {
	for _, jobs := range []int{100, 10000} {
		b.Run(fmt.Sprintf("ledger=%d", jobs), func(b *testing.B) {
			w := newWorldTo(b, "10.0.255.254")
			ctx := context.Background()
			create := func() []string {
				ad, err := w.adm.Create(ctx, request(50))
				if err != nil {
					b.Fatal(err)
				}
				names, err := w.fsm.ApplyCommand(ad.Command)
				if err != nil {
					b.Fatal(err)
				}
				ad.Release()
				return names
			}
			for range jobs / 50 {
				create()
			}
			b.ResetTimer()
			for b.Loop() {
				names := create()
				b.StopTimer()
				var cmds []*ledgerv1.Command
				for _, n := range names {
					cmds = append(cmds, &ledgerv1.Command{Op: &ledgerv1.Command_CancelMigrationJob{CancelMigrationJob: &ledgerv1.CancelMigrationJob{Name: n}}},
						&ledgerv1.Command{Op: &ledgerv1.Command_DeleteMigrationJob{DeleteMigrationJob: &ledgerv1.DeleteResource{Name: n}}})
				}
				w.apply(&ledgerv1.Command{Op: &ledgerv1.Command_Batch{Batch: &ledgerv1.Batch{Commands: cmds}}})
				b.StartTimer()
			}
		})
	}
}

// TestPlacementCountsQueuedJobs: with fewest_vms, each batch counts the
// queued and running jobs of the batches before it on their hosts (and a
// job without target_host on its migration server's host), never a
// cancelled one.
func TestPlacementCountsQueuedJobs(t *testing.T) {
	w := newWorld(t)
	facts := &ferryv1.HostFacts{Cpus: 16, MemoryAvailableBytes: 64 * gib}
	w.apply(&ledgerv1.Command{Op: &ledgerv1.Command_PutHost{PutHost: &ledgerv1.PutHost{Host: &ferryv1.Host{
		Name: "hosts/kvm2", Cluster: "clusters/c1", Connected: true, Facts: facts}}}})
	ctx := context.Background()
	create := func(n int) ([]string, []string) {
		t.Helper()
		ad, err := w.adm.Create(ctx, request(n))
		if err != nil {
			t.Fatal(err)
		}
		defer ad.Release()
		var hosts []string
		for _, j := range ad.Command.GetCreateMigrationJobs().GetJobs() {
			hosts = append(hosts, j.GetTargetHost())
		}
		return w.apply(ad.Command), hosts
	}
	names, hosts := create(3)
	if want := []string{"hosts/kvm1", "hosts/kvm2", "hosts/kvm1"}; !slices.Equal(hosts, want) {
		t.Fatalf("first batch on %v, want %v", hosts, want)
	}
	if _, hosts := create(1); !slices.Equal(hosts, []string{"hosts/kvm2"}) {
		t.Fatalf("second batch on %v, want kvm2 (2 queued jobs on kvm1, 1 on kvm2)", hosts)
	}
	w.apply(&ledgerv1.Command{Op: &ledgerv1.Command_CancelMigrationJob{CancelMigrationJob: &ledgerv1.CancelMigrationJob{Name: names[0]}}})
	if _, hosts := create(1); !slices.Equal(hosts, []string{"hosts/kvm1"}) {
		t.Fatalf("after a job of kvm1 was cancelled, batch on %v, want kvm1 (1 job against 2)", hosts)
	}
	// Two jobs placed before placement existed count on their migration
	// server's host, kvm1: 4 against kvm2's 2.
	old := func(name string) *ferryv1.MigrationJob {
		return &ferryv1.MigrationJob{Name: name, Source: "sources/kvm", SourceVm: name, MigrationServer: "migrationServers/kvm",
			Target: &ferryv1.TargetVm{VmName: name, Cluster: "clusters/c1", PrimaryStorage: "primaryStorages/nfs"}}
	}
	w.apply(&ledgerv1.Command{Op: &ledgerv1.Command_CreateMigrationJobs{CreateMigrationJobs: &ledgerv1.CreateMigrationJobs{
		Jobs: []*ferryv1.MigrationJob{old("migrationJobs/old-1"), old("migrationJobs/old-2")}}}})
	if _, hosts := create(2); !slices.Equal(hosts, []string{"hosts/kvm2", "hosts/kvm2"}) {
		t.Fatalf("with two unplaced jobs on kvm1's server, batch on %v, want kvm2 twice", hosts)
	}
}
