package api

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

func TestCreateMigrationJobsRequestIDReturnsFirstAnswer(t *testing.T) {
	e := newEnv(t, true)
	e.seed()
	c := ctx(t)
	req := jobsReq(3)
	req.RequestId = "batch-1"
	first := must[*ferryv1.CreateMigrationJobsResponse](t)(e.jobs.CreateMigrationJobs(c, req))
	if len(first.GetJobs()) != 3 {
		t.Fatalf("created %d jobs, want 3", len(first.GetJobs()))
	}
	for _, j := range first.GetJobs() {
		if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_QUEUED || j.GetCreateTime() == nil || !j.GetOptions().GetAutoStart() {
			t.Fatalf("job not stamped as a new queued job: %v", j)
		}
	}
	again := must[*ferryv1.CreateMigrationJobsResponse](t)(e.jobs.CreateMigrationJobs(c, req))
	if !proto.Equal(first, again) {
		t.Fatalf("repeat answered\n%v\nwant the first answer\n%v", again, first)
	}
	if n := len(e.ledger.Jobs(ledger.JobFilter{})); n != 3 {
		t.Fatalf("ledger holds %d jobs after a repeat, want 3", n)
	}
	// The first answer wins even when the repeat would now be refused.
	req.Jobs = append(req.Jobs, jobsReq(60).Jobs...)
	again = must[*ferryv1.CreateMigrationJobsResponse](t)(e.jobs.CreateMigrationJobs(c, req))
	if !proto.Equal(first, again) {
		t.Fatal("a changed repeat did not return the first answer")
	}
}

func TestCreateRequestIDIdempotentForEveryResource(t *testing.T) {
	e := newEnv(t, true)
	e.seed()
	c := ctx(t)
	req := &ferryv1.CreateClusterRequest{Cluster: &ferryv1.Cluster{DisplayName: "east"}, RequestId: "r-cluster"}
	a := must[*ferryv1.Cluster](t)(e.inv.CreateCluster(c, req))
	b := must[*ferryv1.Cluster](t)(e.inv.CreateCluster(c, req))
	if !proto.Equal(a, b) {
		t.Fatalf("cluster: %v then %v", a, b)
	}
	creq := &ferryv1.CreateCredentialRequest{RequestId: "r-cred", Credential: &ferryv1.Credential{
		Type: ferryv1.CredentialType_CREDENTIAL_TYPE_PASSWORD, Secret: "x"}}
	c1 := must[*ferryv1.Credential](t)(e.sources.CreateCredential(c, creq))
	c2 := must[*ferryv1.Credential](t)(e.sources.CreateCredential(c, creq))
	if !proto.Equal(c1, c2) {
		t.Fatalf("credential: %v then %v", c1, c2)
	}
}

func TestIPAllocation(t *testing.T) {
	e := newEnv(t, true)
	e.seed()
	c := ctx(t)
	// net1 is 10.0.0.1-10.0.0.20 with gateway 10.0.0.1; 10.0.0.3 is held.
	e.queuedJob("migrationJobs/holder", "10.0.0.3")
	req := jobsReq(3)
	req.Jobs[1].Target.Nics[0].Ip = "10.0.0.2" // asked for; later VMs must skip it
	resp := must[*ferryv1.CreateMigrationJobsResponse](t)(e.jobs.CreateMigrationJobs(c, req))
	got := ips(resp.GetJobs())
	if want := []string{"10.0.0.4", "10.0.0.2", "10.0.0.5"}; !slices.Equal(got, want) {
		t.Fatalf("allocated %v, want %v", got, want)
	}
	if mac := resp.GetJobs()[0].GetTarget().GetNics()[0].GetMac(); mac != "52:54:00:00:00:00" {
		t.Fatalf("MAC defaulted to %q, want the source MAC", mac)
	}

	// Concurrent creates on the leader never share an address.
	var wg sync.WaitGroup
	var mu sync.Mutex
	var all []string
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := jobsReqWith(func(r *ferryv1.CreateMigrationJobsRequest) { r.Jobs[0].SourceVm = fmt.Sprintf("c-%d", i) })
			resp, err := e.jobs.CreateMigrationJobs(c, r)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			all = append(all, ips(resp.GetJobs())...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	slices.Sort(all)
	if len(slices.Compact(slices.Clone(all))) != 8 {
		t.Fatalf("concurrent creates shared addresses: %v", all)
	}

	// 19 usable addresses (.2-.20); 12 are now held. Asking for 8 more fails.
	_, err := e.jobs.CreateMigrationJobs(c, jobsReq(8))
	wantCode(t, err, codes.FailedPrecondition, "jobs[7].target.nics[0].l3_network: no free address left in l3Networks/net1")
	must[*ferryv1.CreateMigrationJobsResponse](t)(e.jobs.CreateMigrationJobs(c, jobsReq(7)))

	// A cancelled job frees its address for the next batch.
	must[*ferryv1.CancelMigrationJobResponse](t)(e.jobs.CancelMigrationJob(c, &ferryv1.CancelMigrationJobRequest{Name: "migrationJobs/holder"}))
	resp = must[*ferryv1.CreateMigrationJobsResponse](t)(e.jobs.CreateMigrationJobs(c, jobsReq(1)))
	if got := ips(resp.GetJobs()); got[0] != "10.0.0.3" {
		t.Fatalf("after cancel allocated %v, want 10.0.0.3", got)
	}
}

func ips(jobs []*ferryv1.MigrationJob) []string {
	var out []string
	for _, j := range jobs {
		for _, n := range j.GetTarget().GetNics() {
			out = append(out, n.GetIp())
		}
	}
	return out
}

func TestDeleteMigrationServerCancelsItsJobs(t *testing.T) {
	e := newEnv(t, true)
	e.seed()
	c := ctx(t)
	jobs := must[*ferryv1.CreateMigrationJobsResponse](t)(e.jobs.CreateMigrationJobs(c, jobsReq(3))).GetJobs()
	e.startJob(jobs[0].GetName(), 1)
	must[*ferryv1.CancelMigrationJobResponse](t)(e.jobs.CancelMigrationJob(c, &ferryv1.CancelMigrationJobRequest{Name: jobs[2].GetName()}))

	resp := must[*ferryv1.DeleteMigrationServerResponse](t)(e.servers.DeleteMigrationServer(c, &ferryv1.DeleteMigrationServerRequest{Name: "migrationServers/kvm"}))
	want := []string{jobs[0].GetName(), jobs[1].GetName()}
	if !slices.Equal(resp.GetCancelledJobs(), want) {
		t.Fatalf("cancelled %v, want the running and the queued job %v", resp.GetCancelledJobs(), want)
	}
	for _, name := range want {
		j := must[*ferryv1.MigrationJob](t)(e.jobs.GetMigrationJob(c, &ferryv1.GetMigrationJobRequest{Name: name}))
		if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_CANCELLED || j.GetReason() == "" {
			t.Fatalf("%s is %v (%q), want CANCELLED with a reason", name, j.GetState(), j.GetReason())
		}
	}
	_, err := e.servers.GetMigrationServer(c, &ferryv1.GetMigrationServerRequest{Name: "migrationServers/kvm"})
	wantCode(t, err, codes.NotFound, "name:")
}

func TestJobLifecycle(t *testing.T) {
	e := newEnv(t, true)
	e.seed()
	c := ctx(t)
	job := must[*ferryv1.CreateMigrationJobsResponse](t)(e.jobs.CreateMigrationJobs(c, jobsReq(1))).GetJobs()[0]
	name := job.GetName()
	cancelled := must[*ferryv1.CancelMigrationJobResponse](t)(e.jobs.CancelMigrationJob(c, &ferryv1.CancelMigrationJobRequest{Name: name, Reason: "wrong VM"})).GetJob()
	if cancelled.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_CANCELLED || cancelled.GetReason() != "wrong VM" {
		t.Fatalf("cancel gave %v", cancelled)
	}
	_, err := e.jobs.CancelMigrationJob(c, &ferryv1.CancelMigrationJobRequest{Name: name})
	wantCode(t, err, codes.FailedPrecondition, "name: job "+name+" is already")
	restarted := must[*ferryv1.RestartMigrationJobResponse](t)(e.jobs.RestartMigrationJob(c, &ferryv1.RestartMigrationJobRequest{Name: name})).GetJob()
	if restarted.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_QUEUED {
		t.Fatalf("restart gave %v", restarted.GetState())
	}
	must[*ferryv1.CancelMigrationJobResponse](t)(e.jobs.CancelMigrationJob(c, &ferryv1.CancelMigrationJobRequest{Name: name}))
	must[*emptypb.Empty](t)(e.jobs.DeleteMigrationJob(c, &ferryv1.DeleteMigrationJobRequest{Name: name}))
	_, err = e.jobs.GetMigrationJob(c, &ferryv1.GetMigrationJobRequest{Name: name})
	wantCode(t, err, codes.NotFound, "name:")
}

func TestListMigrationJobsFilters(t *testing.T) {
	e := newEnv(t, true)
	e.seed()
	c := ctx(t)
	jobs := must[*ferryv1.CreateMigrationJobsResponse](t)(e.jobs.CreateMigrationJobs(c, jobsReq(4))).GetJobs()
	e.startJob(jobs[1].GetName(), 1)
	list := func(req *ferryv1.ListMigrationJobsRequest) int {
		return len(must[*ferryv1.ListMigrationJobsResponse](t)(e.jobs.ListMigrationJobs(c, req)).GetJobs())
	}
	for _, tc := range []struct {
		req  *ferryv1.ListMigrationJobsRequest
		want int
	}{
		{&ferryv1.ListMigrationJobsRequest{}, 4},
		{&ferryv1.ListMigrationJobsRequest{State: ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING}, 1},
		{&ferryv1.ListMigrationJobsRequest{State: ferryv1.MigrationJobState_MIGRATION_JOB_STATE_QUEUED}, 3},
		{&ferryv1.ListMigrationJobsRequest{MigrationServer: "migrationServers/kvm"}, 4},
		{&ferryv1.ListMigrationJobsRequest{MigrationServer: "migrationServers/vmw"}, 0},
		{&ferryv1.ListMigrationJobsRequest{Source: "sources/kvm"}, 4},
		{&ferryv1.ListMigrationJobsRequest{Source: "sources/vc"}, 0},
	} {
		if got := list(tc.req); got != tc.want {
			t.Errorf("%v: %d jobs, want %d", tc.req, got, tc.want)
		}
	}
}

func TestWatchMigrationJobs(t *testing.T) {
	e := newEnv(t, true)
	e.seed()
	c := ctx(t)
	jobs := must[*ferryv1.CreateMigrationJobsResponse](t)(e.jobs.CreateMigrationJobs(c, jobsReq(2))).GetJobs()
	name := jobs[0].GetName()
	stream := must[grpc.ServerStreamingClient[ferryv1.WatchMigrationJobsResponse]](t)(e.jobs.WatchMigrationJobs(c,
		&ferryv1.WatchMigrationJobsRequest{Names: []string{name}, MigrationServer: "migrationServers/kvm", SendInitial: true}))
	ev := recv(t, stream)
	if ev.GetType() != ferryv1.WatchEventType_WATCH_EVENT_TYPE_INITIAL || ev.GetJob().GetName() != name {
		t.Fatalf("first event %v, want INITIAL of %s only", ev, name)
	}

	e.startJob(jobs[1].GetName(), 1) // filtered out: another job
	e.startJob(name, 1)
	ev = recv(t, stream)
	if ev.GetType() != ferryv1.WatchEventType_WATCH_EVENT_TYPE_CHANGED || ev.GetJob().GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING {
		t.Fatalf("got %v, want CHANGED to RUNNING of %s", ev, name)
	}

	disks := []*ferryv1.DiskProgress{{SourceDisk: "vda", TotalBytes: 100, DoneBytes: 40}}
	if !e.hub.Progress(name, 1, disks) {
		t.Fatal("hub refused progress")
	}
	ev = recv(t, stream)
	if ev.GetType() != ferryv1.WatchEventType_WATCH_EVENT_TYPE_PROGRESS || ev.GetJob().GetDisks()[0].GetDoneBytes() != 40 {
		t.Fatalf("got %v, want PROGRESS with 40 bytes done", ev)
	}
	got := must[*ferryv1.MigrationJob](t)(e.jobs.GetMigrationJob(c, &ferryv1.GetMigrationJobRequest{Name: name}))
	if len(got.GetDisks()) != 1 || got.GetDisks()[0].GetDoneBytes() != 40 {
		t.Fatalf("Get does not show live progress: %v", got.GetDisks())
	}

	must[*ferryv1.CancelMigrationJobResponse](t)(e.jobs.CancelMigrationJob(c, &ferryv1.CancelMigrationJobRequest{Name: name}))
	ev = recv(t, stream)
	if ev.GetJob().GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_CANCELLED {
		t.Fatalf("got %v, want CANCELLED", ev)
	}
}

func recv(t *testing.T, s grpc.ServerStreamingClient[ferryv1.WatchMigrationJobsResponse]) *ferryv1.WatchMigrationJobsResponse {
	t.Helper()
	ev, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

// blockingStream is a watch stream whose Send waits until released, so
// the hub's buffer overflows.
type blockingStream struct {
	grpc.ServerStream
	ctx     context.Context
	release chan struct{}
	sent    chan struct{}
}

func (b *blockingStream) Context() context.Context { return b.ctx }

func (b *blockingStream) Send(*ferryv1.WatchMigrationJobsResponse) error {
	b.sent <- struct{}{}
	<-b.release
	return nil
}

func TestWatchFellBehind(t *testing.T) {
	e := newEnv(t, true)
	e.seed()
	c := ctx(t)
	e.api.watchBuffer = 2
	s := &blockingStream{ctx: c, release: make(chan struct{}), sent: make(chan struct{}, 100)}
	done := make(chan error, 1)
	go func() { done <- (&jobService{a: e.api}).WatchMigrationJobs(&ferryv1.WatchMigrationJobsRequest{}, s) }()
	// Create jobs one by one until the first event blocks the watcher and
	// the rest overflow its buffer.
	deadline := time.After(5 * time.Second)
	for i := 0; ; i++ {
		_, err := e.jobs.CreateMigrationJobs(c, jobsReqWith(func(r *ferryv1.CreateMigrationJobsRequest) { r.Jobs[0].SourceVm = fmt.Sprint(i) }))
		if err != nil {
			break // the network ran out of addresses: plenty of events by now
		}
		select {
		case <-deadline:
			t.Fatal("no overflow")
		default:
		}
	}
	close(s.release)
	select {
	case err := <-done:
		wantCode(t, err, codes.Unavailable, "watcher fell behind; watch again")
	case <-time.After(5 * time.Second):
		t.Fatal("watch did not end")
	}
}
