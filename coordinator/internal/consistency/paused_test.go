package consistency

import (
	"context"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/ferry-v2v/ferry/pkg/grpcutil"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// forwardTimeout is the --forward-timeout of the paused-leader test: long
// enough for an election on a loaded machine (1.1-1.2 s idle; the whole
// suite's packages running beside it once took longer than 3 s), far
// below the 20 s the caller allows. A call gives up as soon as another
// leader is known, so a longer bound costs nothing when elections are quick.
const forwardTimeout = 6 * time.Second

// slack is what a loaded machine may add to the forward timeout: the
// follower's check runs every 50 ms, then the answer travels back.
const slack = 3 * time.Second

// TestPausedLeaderFailsFast: with the leader SIGSTOPped, a write and a
// linearizable read sent to a follower (which still believes the paused
// node leads and forwards them there) fail UNAVAILABLE within the forward
// timeout, naming a new leader, although the caller allows 20 s, and a
// watch the follower relays from the paused leader ends the same way; the same
// write at the same follower then succeeds on the new leader, and the
// paused node, resumed, serves the new value.
func TestPausedLeaderFailsFast(t *testing.T) {
	if testing.Short() {
		t.Skip("three coordinator processes")
	}
	c := startCluster(t, "--forward-timeout", forwardTimeout.String())
	var (
		old, f   *node
		settings ferryv1.SettingsServiceClient
	)
	update := func(ctx context.Context, secs int64, opts ...grpc.CallOption) error {
		_, err := settings.UpdateSettings(ctx, &ferryv1.UpdateSettingsRequest{
			Settings:   &ferryv1.Settings{CacheRetention: durationpb.New(time.Duration(secs) * time.Second)},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"cache_retention"}}}, opts...)
		return err
	}
	// On a loaded machine the first leader may not last: wait for one that
	// stays while a write goes through a follower.
	testkit.WaitFor(t, 60*time.Second, "a write through a follower, the leader unchanged", func() bool {
		old = c.leader(30*time.Second, nil)
		f = c.other(old)
		settings = ferryv1.NewSettingsServiceClient(c.dial(f))
		if err := update(ctxFor(t, 10*time.Second), 1001); err != nil {
			t.Logf("update through follower %s before the pause: %v", f.id, err)
			return false
		}
		return c.leader(30*time.Second, nil) == old
	})

	// A watch at the follower, relayed to the leader, open before the
	// pause (no job, so no message: it waits for one).
	wctx, stopWatch := context.WithTimeout(context.Background(), 60*time.Second)
	defer stopWatch()
	watch, err := ferryv1.NewMigrationJobServiceClient(c.dial(f)).WatchMigrationJobs(wctx, &ferryv1.WatchMigrationJobsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // let the follower open its relay
	watchEnded := make(chan error, 1)
	go func() {
		for {
			if _, err := watch.Recv(); err != nil {
				watchEnded <- err
				return
			}
		}
	}()

	c.pause(old)
	paused := time.Now()
	t.Logf("paused leader %s (SIGSTOP); calling follower %s", old.id, f.id)
	var wg sync.WaitGroup
	var writeErr, readErr error
	var writeTook, readTook time.Duration
	var trailer metadata.MD
	wg.Add(2)
	go func() {
		defer wg.Done()
		writeErr = update(ctxFor(t, 20*time.Second), 1002, grpc.Trailer(&trailer))
		writeTook = time.Since(paused)
	}()
	go func() {
		defer wg.Done()
		_, readErr = settings.GetSettings(grpcutil.WithLinearizableRead(ctxFor(t, 20*time.Second)), &ferryv1.GetSettingsRequest{})
		readTook = time.Since(paused)
	}()
	wg.Wait()
	for _, r := range []struct {
		what string
		err  error
		took time.Duration
	}{{"write", writeErr, writeTook}, {"linearizable read", readErr, readTook}} {
		hint, ok := grpcutil.LeaderFromError(r.err)
		t.Logf("%s at the follower: %v after %v", r.what, r.err, r.took.Round(time.Millisecond))
		if status.Code(r.err) != codes.Unavailable || !ok || hint == old.addr {
			t.Errorf("%s at the follower with the leader paused: %v; want UNAVAILABLE naming a new leader", r.what, r.err)
		}
		if r.took > forwardTimeout+slack {
			t.Errorf("%s at the follower took %v, want at most the forward timeout %v (+%v)", r.what, r.took, forwardTimeout, slack)
		}
	}
	if hint, _ := grpcutil.LeaderFromTrailer(trailer); hint == "" || hint == old.addr {
		t.Errorf("ferry-leader trailer of the refused write = %q, want the new leader", hint)
	}
	select {
	case err := <-watchEnded:
		took := time.Since(paused)
		hint, ok := grpcutil.LeaderFromError(err)
		t.Logf("watch at the follower ended after %v: %v", took.Round(time.Millisecond), err)
		if status.Code(err) != codes.Unavailable || !ok || hint == old.addr {
			t.Errorf("watch relayed to the paused leader ended with %v; want UNAVAILABLE naming a new leader", err)
		}
		if took > forwardTimeout+slack {
			t.Errorf("watch relayed to the paused leader ended after %v, want at most the forward timeout %v (+%v)", took, forwardTimeout, slack)
		}
	case <-time.After(forwardTimeout + slack):
		t.Errorf("watch relayed to the paused leader still open %v after the pause", forwardTimeout+slack)
	}

	var ok time.Duration
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := update(ctxFor(t, 20*time.Second), 1003)
		if err == nil {
			ok = time.Since(paused)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the write at follower %s still fails 30 s after the pause: %v", f.id, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	now := c.leader(30*time.Second, old)
	t.Logf("the write at follower %s succeeded %v after the pause, on new leader %s", f.id, ok.Round(time.Millisecond), now.id)

	c.resume(old)
	resumed := ferryv1.NewSettingsServiceClient(c.dial(old))
	var got time.Duration
	testkit.WaitFor(t, 30*time.Second, "a linearizable read at the resumed old leader", func() bool {
		var s *ferryv1.Settings
		s, err = resumed.GetSettings(grpcutil.WithLinearizableRead(ctxFor(t, 10*time.Second)), &ferryv1.GetSettingsRequest{})
		got = s.GetCacheRetention().AsDuration()
		return err == nil
	})
	if got != 1003*time.Second {
		t.Fatalf("linearizable read at the resumed %s: cache_retention %v, want 1003s", old.id, got)
	}
}
