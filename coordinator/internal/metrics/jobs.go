package metrics

import (
	"strings"
	"time"

	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// jobTrack is what this node saw of one job: its state (for transitions),
// and on the leader the bytes and rates its agent last reported.
type jobTrack struct {
	state  ferryv1.MigrationJobState
	server string
	epoch  int64
	bytes  map[ferryv1.MigrationJobPhase]int64
	rates  map[ferryv1.MigrationJobPhase]float64
	// verified disks, by source disk
	verified map[string]bool
}

// Directions of ferry_migration_bytes_total.
const (
	dirCopied   = "copied"
	dirUploaded = "uploaded"
	dirVerified = "verified"
)

var phaseDirection = map[ferryv1.MigrationJobPhase]string{
	ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONVERTING: dirCopied,
	ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_UPLOADING:  dirUploaded,
}

// replayGrace: a change stamped this long before the process started is
// the log replaying history at start-up, not counted again.
const replayGrace = 5 * time.Second

func (m *Metrics) track(name string) *jobTrack {
	t, ok := m.jobs[name]
	if !ok {
		t = &jobTrack{}
		m.jobs[name] = t
	}
	return t
}

// JobChanged is fed the ledger's job events (every node): it observes a
// job's duration when it ends, its failure by reason class, and its
// restart. It does not block.
func (m *Metrics) JobChanged(ev ledger.JobEvent) {
	j := ev.Job
	m.mu.Lock()
	defer m.mu.Unlock()
	if ev.Deleted {
		delete(m.jobs, j.GetName())
		return
	}
	t := m.track(j.GetName())
	prev := t.state
	t.state, t.server = j.GetState(), serverID(j.GetMigrationServer())
	if prev == j.GetState() || j.GetUpdateTime().AsTime().Before(m.start.Add(-replayGrace)) {
		return
	}
	switch {
	case ledger.Terminal(j.GetState()) && prev != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_UNSPECIFIED:
		from := j.GetStartTime()
		if from == nil {
			from = j.GetCreateTime()
		}
		if j.GetEndTime() != nil && from != nil {
			m.jobDuration.WithLabelValues(stateLabel(j.GetState())).Observe(j.GetEndTime().AsTime().Sub(from.AsTime()).Seconds())
		}
		if j.GetState() == ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED {
			m.failures.WithLabelValues(ReasonClass(j.GetReason())).Inc()
		}
		t.rates = nil
	case ledger.Terminal(prev) && !ledger.Terminal(j.GetState()):
		m.retries.Inc()
	}
}

// JobProgress is fed an agent's progress or result (the leader): the
// growth of each phase's bytes since the last report of the same
// assignment is added to the server's counters, a disk newly verified
// adds its size, and the running phases' rates are kept for the gauges.
func (m *Metrics) JobProgress(job, server string, epoch int64, timings []*ferryv1.PhaseTiming, disks []*ferryv1.DiskProgress, final bool) {
	server = serverID(server)
	m.mu.Lock()
	defer m.mu.Unlock()
	t := m.track(job)
	if t.epoch != epoch || t.bytes == nil {
		t.epoch, t.bytes, t.verified = epoch, map[ferryv1.MigrationJobPhase]int64{}, map[string]bool{}
	}
	t.server = server
	t.rates = map[ferryv1.MigrationJobPhase]float64{}
	for _, pt := range timings {
		dir, ok := phaseDirection[pt.GetPhase()]
		if !ok {
			continue
		}
		if d := pt.GetBytes() - t.bytes[pt.GetPhase()]; d > 0 {
			m.bytes.WithLabelValues(server, dir).Add(float64(d))
			t.bytes[pt.GetPhase()] = pt.GetBytes()
		}
		if pt.GetEndTime() == nil && !final {
			t.rates[pt.GetPhase()] = pt.GetBytesPerSecond()
		}
	}
	for _, d := range disks {
		if d.GetVerified() && !t.verified[d.GetSourceDisk()] {
			t.verified[d.GetSourceDisk()] = true
			m.bytes.WithLabelValues(server, dirVerified).Add(float64(d.GetTotalBytes()))
		}
	}
	if final {
		t.rates = nil
	}
}

// reasonClasses are the values of ferry_migration_job_failures_total's
// reason label, in the order ReasonClass tries them.
var reasonClasses = []string{"agent_lost", "cancelled", "source", "cache", "target_storage", "target_vm", "verification", "timeout", "other"}

var reasonWords = []struct {
	class string
	words []string
}{
	{"agent_lost", []string{"agent", "disconnected", "lost", "grace period"}},
	{"cancelled", []string{"cancel"}},
	{"verification", []string{"verif", "checksum", "hash", "mismatch"}},
	{"timeout", []string{"timeout", "timed out", "deadline"}},
	{"cache", []string{"cache", "qemu-nbd", "no space"}},
	{"target_storage", []string{"upload", "volume", "primary storage", "rbd", "nfs", "qemu-img"}},
	{"target_vm", []string{"define", "domain", "target vm", "network", "address"}},
	{"source", []string{"source", "ssh", "vcenter", "esxi", "nfc", "libvirt", "backup", "snapshot", "credential", "host key", "authenticat"}},
}

// ReasonClass sorts a job's free-text failure reason into one of a few
// classes, so the failure counter's label stays bounded.
func ReasonClass(reason string) string {
	r := strings.ToLower(reason)
	for _, c := range reasonWords {
		for _, w := range c.words {
			if strings.Contains(r, w) {
				return c.class
			}
		}
	}
	return "other"
}

func stateLabel(s ferryv1.MigrationJobState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "MIGRATION_JOB_STATE_"))
}

func phaseLabel(p ferryv1.MigrationJobPhase) string {
	if p == ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_UNSPECIFIED {
		return ""
	}
	return strings.ToLower(strings.TrimPrefix(p.String(), "MIGRATION_JOB_PHASE_"))
}

// serverID is a migration server's ID, the label value: "kvm-1" of
// "migrationServers/kvm-1".
func serverID(name string) string { return strings.TrimPrefix(name, "migrationServers/") }
