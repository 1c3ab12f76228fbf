package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// barWidth is the width of a progress bar between its brackets.
const barWidth = 30

// bar draws done of total: "[##########--------------------]".
func bar(done, total int64) string {
	filled := 0
	if total > 0 {
		filled = int(int64(barWidth) * min(max(done, 0), total) / total)
	}
	return "[" + strings.Repeat("#", filled) + strings.Repeat("-", barWidth-filled) + "]"
}

// eta is the time left at the current rate, or "" when unknown.
func eta(done, total int64, rate float64, given time.Duration) string {
	if given > 0 {
		return "ETA " + humanDuration(given)
	}
	if rate <= 0 || total <= done {
		return ""
	}
	return "ETA " + humanDuration(time.Duration(float64(total-done)/rate*float64(time.Second)))
}

// jobETA is the longest disk ETA the server gave, or one from the totals.
func jobETA(j *ferryv1.MigrationJob) string {
	var longest time.Duration
	for _, d := range j.GetDisks() {
		if e := d.GetEta().AsDuration(); d.GetEta() != nil && e > longest {
			longest = e
		}
	}
	done, total, rate := jobTotals(j)
	return eta(done, total, rate, longest)
}

// progressLines draws a job as lines: a header with its state, then while
// it runs a bar per disk with percentage, bytes, rate and ETA.
func progressLines(j *ferryv1.MigrationJob) []string {
	head := fmt.Sprintf("%s  %s → %s  %s", j.GetName(), j.GetSourceVm(), j.GetTarget().GetVmName(), jobState(j))
	switch {
	case j.GetState() == ferryv1.MigrationJobState_MIGRATION_JOB_STATE_QUEUED && j.GetWaitingReason() != "":
		head += "  (" + j.GetWaitingReason() + ")"
	case j.GetState() == ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING:
		done, total, rate := jobTotals(j)
		head += "  " + joinNonEmpty(percent(done, total), humanRate(rate), jobETA(j))
	case terminal(j):
		head += "  " + jobProgress(j)
	}
	lines := []string{strings.TrimRight(head, " ")}
	if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING {
		return lines
	}
	for _, d := range j.GetDisks() {
		name := orDefault(d.GetDisplayName(), d.GetSourceDisk())
		lines = append(lines, fmt.Sprintf("  %-10s %s %6s  %s  %s", name, bar(d.GetDoneBytes(), d.GetTotalBytes()),
			orDefault(percent(d.GetDoneBytes(), d.GetTotalBytes()), "?"),
			humanBytes(d.GetDoneBytes())+"/"+humanBytes(d.GetTotalBytes()),
			joinNonEmpty(humanRate(d.GetBytesPerSecond()), eta(d.GetDoneBytes(), d.GetTotalBytes(), d.GetBytesPerSecond(), d.GetEta().AsDuration()))))
		if v := d.GetVerification(); v != nil {
			lines = append(lines, fmt.Sprintf("  %-10s %s %6s  %s  %s", "  verify", bar(v.GetDoneBytes(), v.GetTotalBytes()),
				orDefault(percent(v.GetDoneBytes(), v.GetTotalBytes()), "?"),
				humanBytes(v.GetDoneBytes())+"/"+humanBytes(v.GetTotalBytes()),
				joinNonEmpty(humanRate(v.GetBytesPerSecond()), eta(v.GetDoneBytes(), v.GetTotalBytes(), v.GetBytesPerSecond(), v.GetEta().AsDuration()))))
		}
	}
	return lines
}

// progressLine is a job on one line, for output that is not a terminal.
func progressLine(ev *ferryv1.WatchMigrationJobsResponse, at time.Time) string {
	j := ev.GetJob()
	s := fmt.Sprintf("%s %-8s %s %s → %s %s", at.Format("15:04:05"), watchEventName(ev.GetType()), j.GetName(),
		j.GetSourceVm(), j.GetTarget().GetVmName(), jobState(j))
	switch {
	case j.GetState() == ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING:
		done, total, rate := jobTotals(j)
		if total > 0 {
			s += " " + joinNonEmpty(percent(done, total), humanBytes(done)+"/"+humanBytes(total), humanRate(rate), jobETA(j))
		}
	default:
		if p := jobProgress(j); p != "" {
			s += " (" + p + ")"
		}
	}
	return s
}

func watchEventName(t ferryv1.WatchEventType) string {
	return strings.ToLower(enumShort(t))
}

func joinNonEmpty(parts ...string) string {
	var out []string
	for _, p := range parts {
		if p != "" {
			out = append(out, p)
		}
	}
	return strings.Join(out, "  ")
}

// screen redraws a block of lines in place on a terminal with ANSI
// escapes: cursor up over the previous block, clear each line, write.
type screen struct {
	w     io.Writer
	lines int // lines drawn last time
}

func (s *screen) draw(lines []string) {
	var b strings.Builder
	if s.lines > 0 {
		fmt.Fprintf(&b, "\x1b[%dA", s.lines)
	}
	for _, l := range lines {
		b.WriteString("\r\x1b[2K")
		b.WriteString(l)
		b.WriteByte('\n')
	}
	// A shorter block leaves old lines below it: clear them.
	for i := len(lines); i < s.lines; i++ {
		b.WriteString("\r\x1b[2K\n")
	}
	if extra := s.lines - len(lines); extra > 0 {
		fmt.Fprintf(&b, "\x1b[%dA", extra)
	}
	s.lines = len(lines)
	_, _ = io.WriteString(s.w, b.String())
}

// diskTable prints a job's disks with bars, for "job get".
func diskTable(w io.Writer, disks []*ferryv1.DiskProgress) error {
	t := newTable(w, "DISK", "PROGRESS", "", "DONE/TOTAL", "RATE", "ETA")
	for _, d := range disks {
		e := strings.TrimPrefix(eta(d.GetDoneBytes(), d.GetTotalBytes(), d.GetBytesPerSecond(), d.GetEta().AsDuration()), "ETA ")
		t.row(orDefault(d.GetDisplayName(), d.GetSourceDisk()), bar(d.GetDoneBytes(), d.GetTotalBytes()),
			percent(d.GetDoneBytes(), d.GetTotalBytes()), humanBytes(d.GetDoneBytes())+"/"+humanBytes(d.GetTotalBytes()),
			humanRate(d.GetBytesPerSecond()), e)
	}
	return t.flush()
}

// verifyTable prints the verification of the disks that have begun one,
// for "job get"; nothing when none has.
func verifyTable(w io.Writer, disks []*ferryv1.DiskProgress) error {
	var rows []*ferryv1.DiskProgress
	for _, d := range disks {
		if d.GetVerification() != nil {
			rows = append(rows, d)
		}
	}
	if len(rows) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	t := newTable(w, "VERIFY", "PROGRESS", "", "CHECKED/TOTAL", "RATE", "ETA")
	for _, d := range rows {
		v := d.GetVerification()
		e := strings.TrimPrefix(eta(v.GetDoneBytes(), v.GetTotalBytes(), v.GetBytesPerSecond(), v.GetEta().AsDuration()), "ETA ")
		t.row(orDefault(d.GetDisplayName(), d.GetSourceDisk()), bar(v.GetDoneBytes(), v.GetTotalBytes()),
			percent(v.GetDoneBytes(), v.GetTotalBytes()), humanBytes(v.GetDoneBytes())+"/"+humanBytes(v.GetTotalBytes()),
			humanRate(v.GetBytesPerSecond()), e)
	}
	return t.flush()
}

// phaseTable draws a job's phase timings: when each phase began and
// ended, counted from the first one's start (UPLOADING begins while
// CONVERTING runs), how long it took, the bytes it moved and its rate.
func phaseTable(w io.Writer, ts []*ferryv1.PhaseTiming) error {
	t := newTable(w, "PHASE", "BEGAN", "ENDED", "TOOK", "BYTES", "RATE")
	var origin time.Time
	for i, p := range ts {
		start := p.GetStartTime().AsTime()
		if i == 0 || start.Before(origin) {
			origin = start
		}
	}
	for _, p := range ts {
		start := p.GetStartTime().AsTime()
		ended, took := "running", ""
		if p.GetEndTime() != nil {
			end := p.GetEndTime().AsTime()
			ended, took = "+"+shortDuration(end.Sub(origin)), shortDuration(end.Sub(start))
		}
		t.row(enumShort(p.GetPhase()), "+"+shortDuration(start.Sub(origin)), ended, took, humanBytes(p.GetBytes()),
			humanRate(p.GetBytesPerSecond()))
	}
	return t.flush()
}

// shortDuration spells a duration to a tenth of a second under a minute,
// as humanDuration does above.
func shortDuration(d time.Duration) string {
	if d < time.Minute && d > -time.Minute {
		return fmt.Sprintf("%.1fs", d.Seconds())
	}
	return humanDuration(d)
}
