package e2e

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"
)

// BenchmarkWarmDowntime migrates one running VM whose 4 GiB root disk is
// all data twice, side by side in one run:
//   - cold: the VM paused for the whole job (options.pause_source_vm, what
//     a KVM source offers short of a warm job), its downtime the job's
//     time from the first phase to the end;
//   - warm: precopy rounds, a round with nothing changed (its cost), then
//     64 MiB written and the cutover, which pauses the VM
//     (pause_source_vm, as the cold job does; a shutdown of this guest
//     with no OS would be its timeout): the measured downtime, against the
//     time to copy 64 MiB at the full round's rate plus the target VM's
//     configuration (its definition, made before the source stops, and
//     CONFIGURING, its start).
//
// It prints both downtimes and their ratio, the bytes each moved, the
// empty round's cost, and the cutover's timeline from the agent's log
// (where each second of the downtime went). It runs once, whatever b.N.
func BenchmarkWarmDowntime(b *testing.B) {
	w := newWorld(b)
	src := testenv.NewTestVM(b, w.lv, testenv.VMOptions{RandomBytes: 4<<30 - testenv.RandomOffset})
	vm := w.sourceVM(w.source, src.Name)

	cold := w.spec(vm, &ferryv1.MigrationOptions{PauseSourceVm: true})
	cold.Target.VmName += "-cold"
	for i, n := range cold.Target.Nics { // a MAC of its own: the warm job's target keeps the source's
		n.Mac = fmt.Sprintf("52:54:00:c0:1d:%02x", i)
	}
	coldJob := w.waitJob(w.createJob(cold), 20*time.Minute, "the cold job to end", terminal)
	if coldJob.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
		b.Fatalf("cold job ended %s: %s", coldJob.GetState(), coldJob.GetReason())
	}
	var coldStart, coldEnd time.Time
	var coldBytes int64
	for _, p := range coldJob.GetPhaseTimings() {
		if s := p.GetStartTime().AsTime(); coldStart.IsZero() || s.Before(coldStart) {
			coldStart = s
		}
		if e := p.GetEndTime().AsTime(); e.After(coldEnd) {
			coldEnd = e
		}
		if p.GetPhase() == ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONVERTING {
			coldBytes = p.GetBytes()
		}
	}
	coldDown := coldEnd.Sub(coldStart)
	w.removeDomain(cold.Target.GetVmName())
	w.lv.Virsh(b, "resume", src.Name)

	// Paused at the cutover (pause_source_vm): the VM runs no OS, so a
	// guest shutdown would only wait for its timeout.
	warm := w.spec(vm, &ferryv1.MigrationOptions{Mode: ferryv1.MigrationMode_MIGRATION_MODE_WARM,
		PrecopyInterval: durationpb.New(10 * time.Second), PauseSourceVm: true})
	name := w.createJob(warm)
	j := w.waitJob(name, 20*time.Minute, "precopy round 2", func(j *ferryv1.MigrationJob) bool {
		return terminal(j) || len(j.GetPrecopyRounds()) >= 2
	})
	if terminal(j) {
		b.Fatalf("warm job ended %s: %s", j.GetState(), j.GetReason())
	}
	empty := j.GetPrecopyRounds()[1]
	written := w.write(src, guestWrite{0, 1 << 30, 64 << 20, 0x77})
	if _, err := w.f.client.Jobs().CutoverMigrationJob(ctx(b, 10*time.Second), &ferryv1.CutoverMigrationJobRequest{Name: name}); err != nil {
		b.Fatal(err)
	}
	j = w.waitJob(name, 10*time.Minute, "the warm job to end", terminal)
	if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
		b.Fatalf("warm job ended %s in %s: %s", j.GetState(), j.GetPhase(), j.GetReason())
	}
	rs := j.GetPrecopyRounds()
	full, final := rs[0], rs[len(rs)-1]
	var warmBytes int64
	for _, r := range rs {
		warmBytes += r.GetReadBytes()
	}
	var configure time.Duration
	for _, p := range j.GetPhaseTimings() {
		if p.GetPhase() == ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONFIGURING {
			configure = p.GetEndTime().AsTime().Sub(p.GetStartTime().AsTime())
		}
	}
	// The target VM's configuration is CONFIGURING (its start) plus its
	// definition, which the cutover makes before the source stops.
	var ahead time.Duration
	if l := jobLines(w.f.agents[w.host], name, `msg="target VM defined ahead of the cutover"`); len(l) > 0 {
		secs, _ := strconv.ParseFloat(field(l[len(l)-1], "seconds"), 64)
		ahead = time.Duration(secs * float64(time.Second))
	}
	configure += ahead
	down := j.GetMeasuredDowntime().AsDuration()
	rate := float64(full.GetReadBytes()) / full.GetDuration().AsDuration().Seconds()
	copy64 := time.Duration(float64(written) / rate * float64(time.Second))
	bound := copy64 + configure
	verdict := "met"
	if down > bound {
		verdict = "MISSED"
	}
	fmt.Printf("    load average %s\n", loadAverage())
	fmt.Printf("    cold (paused for the whole job): downtime %v, %d MiB moved\n", coldDown.Round(10*time.Millisecond), coldBytes>>20)
	fmt.Printf("    warm: %d rounds, %d MiB moved (full round %d MiB in %v, %.0f MB/s); empty round %v, %d bytes read\n",
		len(rs), warmBytes>>20, full.GetReadBytes()>>20, full.GetDuration().AsDuration().Round(10*time.Millisecond), rate/1e6,
		empty.GetDuration().AsDuration().Round(10*time.Millisecond), empty.GetReadBytes())
	fmt.Printf("    warm cutover: %d MiB in the last round (%v), configure %v (defined ahead %v + CONFIGURING %v), measured downtime %v\n",
		final.GetReadBytes()>>20, final.GetDuration().AsDuration().Round(10*time.Millisecond), configure.Round(10*time.Millisecond),
		ahead.Round(10*time.Millisecond), (configure - ahead).Round(10*time.Millisecond), down.Round(10*time.Millisecond))
	fmt.Printf("    downtime warm/cold %.3f; bytes warm/cold %.3f; goal downtime <= %d MiB at the full round's rate (%v) + configure (%v) = %v: %s\n",
		down.Seconds()/coldDown.Seconds(), float64(warmBytes)/float64(max(coldBytes, 1)), written>>20, copy64.Round(10*time.Millisecond),
		configure.Round(10*time.Millisecond), bound.Round(10*time.Millisecond), verdict)
	printTimeline(w.f.agents[w.host], name)
	b.ReportMetric(down.Seconds(), "warm-downtime-s")
	b.ReportMetric(coldDown.Seconds(), "cold-downtime-s")
	b.ReportMetric(empty.GetDuration().AsDuration().Seconds(), "empty-round-s")
}

// printTimeline prints the agent's log lines of the job from the cutover's
// stop of the source to "cutover done", each with its time since the
// first of them and since the line before.
func printTimeline(agent *proc, job string) {
	var lines []string
	for _, l := range agent.lines(job + " ") {
		if len(lines) == 0 && !strings.Contains(l, "cut over") {
			continue
		}
		lines = append(lines, l)
		if strings.Contains(l, `msg="cutover done"`) {
			break
		}
	}
	fmt.Printf("    cutover timeline (agent log; +since the first line, Δ since the line before):\n")
	var first, prev time.Time
	for _, l := range lines {
		at, err := time.Parse(time.RFC3339Nano, field(l, "time"))
		if err != nil {
			continue
		}
		if first.IsZero() {
			first, prev = at, at
		}
		fmt.Printf("    %+8.3fs Δ%6.3fs %s\n", at.Sub(first).Seconds(), at.Sub(prev).Seconds(), strings.TrimSpace(logText(l)))
		prev = at
	}
}

// field is the value of key=value in a slog text line.
func field(l, key string) string {
	i := strings.Index(l, " "+key+"=")
	if i < 0 && strings.HasPrefix(l, key+"=") {
		i = -1
	} else if i < 0 {
		return ""
	}
	v := l[i+len(key)+2:]
	if strings.HasPrefix(v, `"`) {
		if s, err := strconv.QuotedPrefix(v); err == nil {
			u, _ := strconv.Unquote(s)
			return u
		}
	}
	v, _, _ = strings.Cut(v, " ")
	return v
}

// logText is a log line without its time, level, job and epoch.
func logText(l string) string {
	for _, k := range []string{"time", "level", "job", "epoch"} {
		v := field(l, k)
		if v == "" {
			continue
		}
		raw := k + "=" + v
		if strings.ContainsAny(v, " \"=") {
			raw = k + "=" + strconv.Quote(v)
		}
		l = strings.Replace(l, raw, "", 1)
	}
	return strings.Join(strings.Fields(l), " ")
}
