package e2e

import (
	"regexp"
	"strconv"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

var limitsLine = regexp.MustCompile(`^time=(\S+) .*msg="bandwidth limits set" .*downstream_bits_per_second=(\d+) downstream_granted_bytes=(\d+)`)

// limitsSet is one change of the server's limits as the agent applied it:
// when, the new downstream rate, and the bytes its downstream bucket had
// let through until then (the limiter's own account).
type limitsSet struct {
	at      time.Time
	bps     int64
	granted int64
}

// waitLimits waits until the agent has applied a downstream rate of bps
// after a time and returns that change.
func (w *world) waitLimits(bps int64, after time.Time, timeout time.Duration) limitsSet {
	w.t.Helper()
	got := limitsSet{at: after}
	testkit.WaitFor(w.t, timeout, "the agent to set the downstream limit to "+strconv.FormatInt(bps, 10), func() bool {
		for _, l := range w.f.agents[w.host].lines(`msg="bandwidth limits set"`) {
			m := limitsLine.FindStringSubmatch(l)
			if m == nil {
				continue
			}
			at, err := time.Parse(time.RFC3339Nano, m[1])
			b, _ := strconv.ParseInt(m[2], 10, 64)
			g, _ := strconv.ParseInt(m[3], 10, 64)
			if err == nil && b == bps && at.After(got.at) {
				got = limitsSet{at, b, g}
			}
		}
		return got.at.After(after)
	})
	return got
}

// TestBandwidthChangeReachesRunningJob lowers a running job's downstream
// limit from unlimited to 8 MiB/s and lifts it again. The change reaches
// the agent within 2 s; from then on its bucket lets through no more than
// 8 MiB/s (with slack: the limiter's own account, so a loaded machine
// cannot make it fail), and neither do the bytes crossing the source link;
// back to unlimited, the job finishes and its disks match the source.
func TestBandwidthChangeReachesRunningJob(t *testing.T) {
	t.Parallel() // see doc.go
	w := newWorldWith(t, worldOptions{sourceProxy: true})
	src := testenv.NewTestVM(t, w.lv, testenv.VMOptions{RandomBytes: 160 << 20})
	// The target VM is not started: what is measured is the copy.
	name := w.createJob(w.spec(w.sourceVM(w.source, src.Name), &ferryv1.MigrationOptions{AutoStart: proto.Bool(false)}))

	// The copy runs unlimited; once it has moved 8 MiB, the source link is
	// held (nothing moves, nothing breaks) so the job is still copying
	// when the new limit arrives, however fast this machine is.
	testkit.WaitFor(t, 3*time.Minute, "the copy to start", func() bool { return w.sourceProxy.Bytes() > 8<<20 })
	w.sourceProxy.BlackHole()
	before := w.sourceProxy.Bytes()
	if j := w.job(name); j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING {
		t.Fatalf("job is %s before the change: %s", j.GetState(), j.GetReason())
	}
	const limit = 8 << 20 // bytes per second
	asked := time.Now()
	w.setBandwidth(nil, proto.String(eightMiBps))
	lowered := w.waitLimits(67109000, asked.Add(-time.Second), 10*time.Second)
	if d := lowered.at.Sub(asked); d > 2*time.Second {
		t.Errorf("the agent applied the limit %s after it was asked, want within 2 s", d)
	}
	t.Logf("limit applied %s after the request, %d bytes granted before (%d through the source link)",
		lowered.at.Sub(asked).Round(time.Millisecond), lowered.granted, before)
	w.sourceProxy.Heal()

	// What was in flight before the change drains first; then the link
	// carries what the limited bucket grants.
	time.Sleep(time.Second)
	p0, t0 := w.sourceProxy.Bytes(), time.Now()
	time.Sleep(4 * time.Second)
	p1, t1 := w.sourceProxy.Bytes(), time.Now()
	if j := w.job(name); j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING ||
		j.GetPhase() != ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_CONVERTING {
		t.Fatalf("job is %s/%s while limited, want still converting: %s", j.GetState(), j.GetPhase(), j.GetReason())
	}
	w.setBandwidth(nil, proto.String(""))
	lifted := w.waitLimits(0, lowered.at, 10*time.Second)

	window := lifted.at.Sub(lowered.at).Seconds()
	granted := lifted.granted - lowered.granted
	burst := float64(limit) / 20
	rate := float64(granted) / window
	t.Logf("limited: bucket granted %d bytes in %.2f s = %.2f MiB/s; the link carried %.2f MiB/s",
		granted, window, rate/(1<<20), float64(p1-p0)/t1.Sub(t0).Seconds()/(1<<20))
	if max := 1.5*limit*window + burst; float64(granted) > max {
		t.Errorf("the bucket granted %d bytes in %.2f s after the change, more than %.0f (8 MiB/s × 1.5 + burst)", granted, window, max)
	}
	if granted == 0 {
		t.Error("the bucket granted nothing while limited: the job did not copy")
	}
	// The link's bytes include SSH framing and the source's NBD answers:
	// 1.5 × the limit and 4 MiB of what was in flight.
	if linkMax := 1.5*limit*t1.Sub(t0).Seconds() + 4<<20; float64(p1-p0) > linkMax {
		t.Errorf("the source link carried %d bytes in %s while limited, more than %.0f", p1-p0, t1.Sub(t0).Round(time.Millisecond), linkMax)
	}

	j := w.waitJob(name, 3*time.Minute, "the job to end", terminal)
	if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
		t.Fatalf("job ended %s: %s", j.GetState(), j.GetReason())
	}
	for _, d := range src.Disks {
		compare(t, d.Path, w.volume(name, d.Target))
	}
}
