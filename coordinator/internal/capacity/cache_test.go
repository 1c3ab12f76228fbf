package capacity

import (
	"testing"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

const gib = int64(1) << 30

// TestCacheMeasuresTheServersCachePath: the room is the free space the
// agent reports for the server's cache_path, not for its own --cache-path.
func TestCacheMeasuresTheServersCachePath(t *testing.T) {
	srv := &ferryv1.MigrationServer{Name: "migrationServers/kvm-1", Host: "hosts/kvm-1", CachePath: "/srv/ferry-cache"}
	facts := &ferryv1.HostFacts{CacheTotalBytes: 100 * gib, CacheFreeBytes: 90 * gib, // the agent's --cache-path
		Storages: []*ferryv1.StorageSpace{{Path: "/mnt/nfs", FreeBytes: 500 * gib}, {Path: "/srv/ferry-cache", TotalBytes: 10 * gib, FreeBytes: 4 * gib}}}
	r := Cache(srv, facts, 3*gib)
	if !r.Known || r.Free != 4*gib || r.Available() != gib {
		t.Fatalf("room = %+v, available %d; want 4 GiB free, 1 GiB available", r, r.Available())
	}
	if got, want := r.Blocker(2*gib), "cache /srv/ferry-cache on hosts/kvm-1 has 1 GiB free, job needs 2 GiB"; got != want {
		t.Errorf("Blocker = %q, want %q", got, want)
	}
	if got := r.Blocker(gib); got != "" {
		t.Errorf("Blocker(1 GiB) = %q, want none", got)
	}
	unknown := Cache(srv, &ferryv1.HostFacts{CacheTotalBytes: 100 * gib, CacheFreeBytes: 90 * gib}, 0)
	want := "host hosts/kvm-1 does not report the free space of cache path /srv/ferry-cache of migrationServers/kvm-1 yet (its agent measures it a heartbeat after it learns the path)"
	if unknown.Known || unknown.Blocker(1) != want || unknown.Note() != want {
		t.Errorf("unreported path: %+v, blocker %q", unknown, unknown.Blocker(1))
	}
}

func TestReserved(t *testing.T) {
	job := func(server string, state ferryv1.MigrationJobState, size int64) *ferryv1.MigrationJob {
		return &ferryv1.MigrationJob{MigrationServer: server, State: state, Target: &ferryv1.TargetVm{Disks: []*ferryv1.TargetDisk{{SizeBytes: size}, {SizeBytes: 1}}}}
	}
	running, queued := ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING, ferryv1.MigrationJobState_MIGRATION_JOB_STATE_QUEUED
	jobs := []*ferryv1.MigrationJob{job("a", running, gib), job("a", queued, 2*gib), job("b", running, 4*gib), job("a", running, gib)}
	if got := Reserved("a", jobs); got != 2*gib+2 {
		t.Errorf("Reserved(a) = %d, want %d", got, 2*gib+2)
	}
}

func TestFormatBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1 KiB", 1288490189: "1.2 GiB", 4 * gib: "4 GiB"} {
		if got := FormatBytes(n); got != want {
			t.Errorf("FormatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestRoomsReserveRunningAndStartedJobs: the room the scheduler and the
// preview read is the server's cache path less its running jobs and the
// jobs a pass has just started, and nothing of other servers' jobs.
func TestRoomsReserveRunningAndStartedJobs(t *testing.T) {
	srv := &ferryv1.MigrationServer{Name: "migrationServers/a", Host: "kvm-1", CachePath: "/srv/cache"}
	job := func(server string, state ferryv1.MigrationJobState, size int64) *ferryv1.MigrationJob {
		return &ferryv1.MigrationJob{MigrationServer: server, State: state, Target: &ferryv1.TargetVm{Disks: []*ferryv1.TargetDisk{{SizeBytes: size}}}}
	}
	running, queued := ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING, ferryv1.MigrationJobState_MIGRATION_JOB_STATE_QUEUED
	rooms := NewRooms(map[string]*ferryv1.HostFacts{"hosts/kvm-1": {Storages: []*ferryv1.StorageSpace{{Path: "/srv/cache", FreeBytes: 10 * gib}}}})
	rooms.ReserveRunning([]*ferryv1.MigrationJob{job("migrationServers/a", running, gib), job("migrationServers/a", queued, 2*gib), job("migrationServers/b", running, 4*gib)})
	if r := rooms.Room(srv); !r.Known || r.Reserved != gib || r.Available() != 9*gib {
		t.Fatalf("room = %+v; want 10 GiB free, 1 GiB reserved", r)
	}
	rooms.Reserve(job("migrationServers/a", queued, 3*gib)) // started by this pass
	if r := rooms.Room(srv); r.Available() != 6*gib {
		t.Fatalf("after a start: available %d, want 6 GiB", r.Available())
	}
	if r := rooms.Room(&ferryv1.MigrationServer{Name: "migrationServers/c", Host: "hosts/kvm-2", CachePath: "/srv/cache"}); r.Known {
		t.Fatalf("a server whose host is not connected: %+v, want unknown", r)
	}
}
