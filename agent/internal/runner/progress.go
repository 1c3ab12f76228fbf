package runner

import (
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// Progress counts a job's bytes per disk in the current phase and reports
// them at most once per interval; entering a phase is reported at once.
// Drivers may call it from several goroutines.
type Progress struct {
	mu       sync.Mutex
	job      string
	epoch    int64
	phase    ferryv1.MigrationJobPhase
	disks    []*diskCount
	now      func() time.Time
	interval time.Duration
	emit     func(*agentv1.JobProgress)
	sent     time.Time
	dirty    bool
}

type diskCount struct {
	source, display string
	total, done     int64
	start           time.Time
	verified        bool
}

func newProgress(a *agentv1.Assignment, now func() time.Time, interval time.Duration, emit func(*agentv1.JobProgress)) *Progress {
	p := &Progress{job: a.GetJob().GetName(), epoch: a.GetEpoch(), now: now, interval: interval, emit: emit}
	for _, d := range a.GetJob().GetTarget().GetDisks() {
		p.disks = append(p.disks, &diskCount{source: d.GetSourceDisk(), display: d.GetDisplayName(), total: d.GetSizeBytes()})
	}
	return p
}

// disk returns the count of a source disk, adding it when new. The caller
// holds p.mu.
func (p *Progress) disk(source string) *diskCount {
	for _, d := range p.disks {
		if d.source == source {
			return d
		}
	}
	d := &diskCount{source: source, start: p.now()}
	p.disks = append(p.disks, d)
	return d
}

// Phase is the phase the job is in.
func (p *Progress) Phase() ferryv1.MigrationJobPhase {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.phase
}

// SetTotal records how many bytes a disk has to move in this phase.
func (p *Progress) SetTotal(disk string, total int64) {
	p.update(func() { p.disk(disk).total = total })
}

// Add counts n more bytes of a disk done.
func (p *Progress) Add(disk string, n int64) {
	p.update(func() { p.disk(disk).done += n })
}

// SetVerified records that a disk's target was read back and matched the
// source's checksums.
func (p *Progress) SetVerified(disk string) {
	p.update(func() { p.disk(disk).verified = true })
}

// Set records that done bytes of a disk are done.
func (p *Progress) Set(disk string, done int64) {
	p.update(func() { p.disk(disk).done = done })
}

// update applies a change and reports it; a nil Progress counts nothing
// (drivers run outside a runner, in their tests).
func (p *Progress) update(change func()) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	change()
	p.dirty = true
	p.report(false)
}

// enter begins a phase step; resetBytes starts its byte counts from zero.
func (p *Progress) enter(phase ferryv1.MigrationJobPhase, resetBytes bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	changed := phase != p.phase
	p.phase = phase
	if resetBytes {
		now := p.now()
		for _, d := range p.disks {
			d.done, d.start = 0, now
		}
		p.dirty = true
	}
	p.report(changed)
}

// flush reports counts not yet reported once the interval allows it.
func (p *Progress) flush() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.report(false)
}

// report emits the counts when forced, or when they changed and the
// interval has passed. The caller holds p.mu; emit must not block.
func (p *Progress) report(force bool) {
	now := p.now()
	if !force && (!p.dirty || now.Sub(p.sent) < p.interval) {
		return
	}
	p.sent, p.dirty = now, false
	p.emit(&agentv1.JobProgress{Job: p.job, Epoch: p.epoch, Phase: p.phase, Disks: p.disksAt(now)})
}

// snapshot returns the counts as they are.
func (p *Progress) snapshot() []*ferryv1.DiskProgress {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.disksAt(p.now())
}

// disksAt computes each disk's rate (bytes done over time since the phase
// began) and ETA. The caller holds p.mu.
func (p *Progress) disksAt(now time.Time) []*ferryv1.DiskProgress {
	out := make([]*ferryv1.DiskProgress, 0, len(p.disks))
	for _, d := range p.disks {
		dp := &ferryv1.DiskProgress{SourceDisk: d.source, DisplayName: d.display, TotalBytes: d.total, DoneBytes: d.done,
			Verified: d.verified}
		if elapsed := now.Sub(d.start).Seconds(); elapsed > 0 && d.done > 0 && !d.start.IsZero() {
			dp.BytesPerSecond = float64(d.done) / elapsed
			if left := d.total - d.done; left > 0 {
				dp.Eta = durationpb.New(time.Duration(float64(left) / dp.BytesPerSecond * float64(time.Second)))
			}
		}
		out = append(out, dp)
	}
	return out
}
