// Package capacity computes the room a migration server's cache has for
// jobs, in one place (Rooms) for the scheduler (which starts a job only
// when its disks fit) and admission's preview (which shows the same
// figure).
//
// Jobs write their cache under the migration server's cache_path, so that
// is the path measured: the coordinator names it to the agent of the
// server's host among the paths it measures (agentv1.Welcome and Heartbeat
// storage_paths), and the agent reports its file system's free space in
// HostFacts.storages. The agent's own --cache-path (HostFacts
// cache_free_bytes) is another directory and plays no part.
package capacity

import (
	"fmt"
	"strconv"
	"strings"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// CacheRoom is the space of one migration server's cache.
type CacheRoom struct {
	Server, Host, Path string
	// Known is set when the server's host reports the free space of Path.
	Known bool
	// Free is the space free at Path for an unprivileged writer.
	Free int64
	// Reserved is what the server's running jobs reserve: their disks'
	// whole virtual sizes, though they may have written some already.
	Reserved int64
}

// Cache reads the room of srv's cache from the facts its host's agent
// reported (nil when the host is not connected), less reserved.
func Cache(srv *ferryv1.MigrationServer, facts *ferryv1.HostFacts, reserved int64) CacheRoom {
	r := CacheRoom{Server: srv.GetName(), Host: srv.GetHost(), Path: srv.GetCachePath(), Reserved: reserved}
	for _, s := range facts.GetStorages() {
		if s.GetPath() == r.Path && r.Path != "" {
			r.Known, r.Free = true, s.GetFreeBytes()
			break
		}
	}
	return r
}

// Available is the free space less the reservations, never below zero.
func (r CacheRoom) Available() int64 { return max(r.Free-r.Reserved, 0) }

// Blocker says why a job needing need bytes cannot start now, "" when it
// can.
func (r CacheRoom) Blocker(need int64) string {
	if !r.Known {
		return fmt.Sprintf("host %s does not report the free space of cache path %s of %s yet (its agent measures it a heartbeat after it learns the path)",
			r.Host, r.Path, r.Server)
	}
	if free := r.Available(); free < need {
		return fmt.Sprintf("cache %s on %s has %s free, job needs %s", r.Path, r.Host, FormatBytes(free), FormatBytes(need))
	}
	return ""
}

// Note describes the room as a preview shows it.
func (r CacheRoom) Note() string {
	if !r.Known {
		return r.Blocker(0)
	}
	return fmt.Sprintf("%d bytes free at cache path %s on %s less %d bytes reserved by the running jobs of %s; jobs that do not fit at once wait in the queue for room",
		r.Free, r.Path, r.Host, r.Reserved, r.Server)
}

// JobBytes is what a job reserves in its server's cache: the virtual
// sizes of its disks.
func JobBytes(j *ferryv1.MigrationJob) int64 {
	var n int64
	for _, d := range j.GetTarget().GetDisks() {
		n += d.GetSizeBytes()
	}
	return n
}

// Rooms are the caches of the migration servers as one moment sees them:
// the free space the connected hosts' agents report and what the running
// jobs reserve. The scheduler's passes and the preview both read a
// cache's room here.
type Rooms struct {
	facts    map[string]*ferryv1.HostFacts // by host name
	reserved map[string]int64              // by migration server
}

// NewRooms starts from the facts of the connected hosts, by host name
// ("hosts/kvm-1"), with nothing reserved.
func NewRooms(facts map[string]*ferryv1.HostFacts) *Rooms {
	return &Rooms{facts: facts, reserved: map[string]int64{}}
}

// Reserve counts what job j, running or just started, reserves in its
// migration server's cache.
func (r *Rooms) Reserve(j *ferryv1.MigrationJob) {
	r.reserved[j.GetMigrationServer()] += JobBytes(j)
}

// ReserveRunning reserves the running jobs among jobs.
func (r *Rooms) ReserveRunning(jobs []*ferryv1.MigrationJob) {
	for _, j := range jobs {
		if j.GetState() == ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING {
			r.Reserve(j)
		}
	}
}

// Room is the room of srv's cache: what its host reports, less what the
// server's jobs reserve.
func (r *Rooms) Room(srv *ferryv1.MigrationServer) CacheRoom {
	return Cache(srv, r.facts[hostName(srv.GetHost())], r.reserved[srv.GetName()])
}

// Reserved sums what the running jobs of server reserve among jobs.
func Reserved(server string, jobs []*ferryv1.MigrationJob) int64 {
	r := NewRooms(nil)
	r.ReserveRunning(jobs)
	return r.reserved[server]
}

// hostName turns a host reference into the host resource name.
func hostName(h string) string {
	if h == "" || strings.HasPrefix(h, "hosts/") {
		return h
	}
	return "hosts/" + h
}

// FormatBytes writes n in binary units with at most one decimal: "512 B",
// "1.2 GiB", "4 GiB".
func FormatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	v, i := float64(n)/unit, 0
	for v >= unit && i < len(units)-1 {
		v /= unit
		i++
	}
	s := strconv.FormatFloat(v, 'f', 1, 64)
	if s[len(s)-2:] == ".0" {
		s = s[:len(s)-2]
	}
	return s + " " + units[i]
}
