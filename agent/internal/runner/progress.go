package runner

import (
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

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
	timings  []*timing // in the order the phases began
	rounds   []*ferryv1.PrecopyRound
}

// timing is one phase's run; bytes is fixed when it ends.
type timing struct {
	phase      ferryv1.MigrationJobPhase
	start, end time.Time
	bytes      int64
}

type diskCount struct {
	source, display string
	total, done     int64
	start           time.Time
	verified        bool
	// uploaded counts the data bytes an upload beside the copy wrote to
	// the target; it becomes done when UPLOADING begins.
	uploaded    int64
	uploadStart time.Time
	// The verification of the target: bytes checked of those to check,
	// since verifyStart (zero until it begins).
	verifyDone, verifyTotal int64
	verifyStart             time.Time
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

// Verifying records that the verification of a disk's target has
// checked done of total bytes. Its rate counts from the first call.
func (p *Progress) Verifying(disk string, done, total int64) {
	p.update(func() {
		d := p.disk(disk)
		if d.verifyStart.IsZero() {
			d.verifyStart = p.now()
		}
		d.verifyDone, d.verifyTotal = done, total
	})
}

// Verified reports whether SetVerified was called for a disk in this run
// of the job (an upload that verified it as it went).
func (p *Progress) Verified(disk string) bool {
	if p == nil {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, d := range p.disks {
		if d.source == disk {
			return d.verified
		}
	}
	return false
}

// Uploaded records that an upload has written done data bytes of a disk
// to the target. Beside CONVERTING they are kept apart from the copy's
// counts (and shown in the UPLOADING phase's timing); in UPLOADING they
// are the disk's done bytes.
func (p *Progress) Uploaded(disk string, done int64) {
	p.update(func() {
		d := p.disk(disk)
		if d.uploadStart.IsZero() {
			d.uploadStart = p.now()
		}
		d.uploaded = done
		if p.phase == ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_UPLOADING {
			d.done = done
		}
	})
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
	now := p.now()
	if changed {
		p.endPhase(p.phase, now)
		p.begin(phase, now)
	}
	p.phase = phase
	if resetBytes {
		for _, d := range p.disks {
			d.done, d.start = 0, now
			if phase == ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_UPLOADING && !d.uploadStart.IsZero() {
				// An upload beside the copy: UPLOADING carries on from it.
				d.done, d.start = d.uploaded, d.uploadStart
			}
		}
		p.dirty = true
	}
	p.report(changed)
}

// beginEarly starts the timing of a phase that begins beside the current
// one (UPLOADING beside CONVERTING); the job's phase does not change.
func (p *Progress) beginEarly(phase ferryv1.MigrationJobPhase) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.begin(phase, p.now())
	p.dirty = true
}

// begin opens the timing of phase unless it is open already. The caller
// holds p.mu.
func (p *Progress) begin(phase ferryv1.MigrationJobPhase, now time.Time) {
	if phase == ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_UNSPECIFIED {
		return
	}
	for _, t := range p.timings {
		if t.phase == phase && t.end.IsZero() {
			return
		}
	}
	p.timings = append(p.timings, &timing{phase: phase, start: now})
}

// endPhase closes the timing of phase, fixing its bytes. The caller holds
// p.mu.
func (p *Progress) endPhase(phase ferryv1.MigrationJobPhase, now time.Time) {
	for _, t := range p.timings {
		if t.phase == phase && t.end.IsZero() {
			t.bytes, t.end = p.phaseBytes(phase), now
		}
	}
}

// endPhases closes every open timing (the job has ended) and returns them.
func (p *Progress) endPhases() []*ferryv1.PhaseTiming {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	for _, t := range p.timings {
		if t.end.IsZero() {
			t.bytes, t.end = p.phaseBytes(t.phase), now
		}
	}
	return p.timingsAt(now)
}

// phaseBytes is what a phase has moved so far: the copy's done bytes in
// CONVERTING, the upload's in UPLOADING. The caller holds p.mu.
func (p *Progress) phaseBytes(phase ferryv1.MigrationJobPhase) int64 {
	var n int64
	for _, d := range p.disks {
		switch {
		case phase == p.phase && phase != ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONFIGURING &&
			phase != ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_PREPARING:
			n += d.done
		case phase == ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_UPLOADING:
			n += d.uploaded
		}
	}
	return n
}

// timingsAt returns the timings with their rates. The caller holds p.mu.
func (p *Progress) timingsAt(now time.Time) []*ferryv1.PhaseTiming {
	out := make([]*ferryv1.PhaseTiming, 0, len(p.timings))
	for _, t := range p.timings {
		pt := &ferryv1.PhaseTiming{Phase: t.phase, StartTime: timestamppb.New(t.start), Bytes: t.bytes}
		end := t.end
		if end.IsZero() {
			pt.Bytes, end = p.phaseBytes(t.phase), now
		} else {
			pt.EndTime = timestamppb.New(t.end)
		}
		if secs := end.Sub(t.start).Seconds(); secs > 0 {
			pt.BytesPerSecond = float64(pt.Bytes) / secs
		}
		out = append(out, pt)
	}
	return out
}

// PhaseTimings returns the timings so far.
func (p *Progress) PhaseTimings() []*ferryv1.PhaseTiming {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.timingsAt(p.now())
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
	p.emit(&agentv1.JobProgress{Job: p.job, Epoch: p.epoch, Phase: p.phase, Disks: p.disksAt(now), PhaseTimings: p.timingsAt(now),
		PrecopyRounds: p.roundsLocked()})
}

// addRound records a warm job's finished precopy round and reports it at
// once.
func (p *Progress) addRound(r *ferryv1.PrecopyRound) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rounds = append(p.rounds, proto.Clone(r).(*ferryv1.PrecopyRound))
	p.report(true)
}

// Rounds returns the precopy rounds so far.
func (p *Progress) Rounds() []*ferryv1.PrecopyRound {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.roundsLocked()
}

func (p *Progress) roundsLocked() []*ferryv1.PrecopyRound {
	out := make([]*ferryv1.PrecopyRound, len(p.rounds))
	for i, r := range p.rounds {
		out[i] = proto.Clone(r).(*ferryv1.PrecopyRound)
	}
	return out
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
		if !d.verifyStart.IsZero() {
			dp.Verification = verifyAt(d, now)
		}
		out = append(out, dp)
	}
	return out
}

// verifyAt is a disk's verification progress at now. The caller holds
// p.mu.
func verifyAt(d *diskCount, now time.Time) *ferryv1.VerifyProgress {
	v := &ferryv1.VerifyProgress{TotalBytes: d.verifyTotal, DoneBytes: d.verifyDone}
	if elapsed := now.Sub(d.verifyStart).Seconds(); elapsed > 0 && d.verifyDone > 0 {
		v.BytesPerSecond = float64(d.verifyDone) / elapsed
		if left := d.verifyTotal - d.verifyDone; left > 0 {
			v.Eta = durationpb.New(time.Duration(float64(left) / v.BytesPerSecond * float64(time.Second)))
		}
	}
	return v
}
