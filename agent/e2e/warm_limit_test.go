package e2e

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"
)

// TestWarmRoundsAreLimited: a warm job's delta round reads through the
// migration server's downstream bucket like any copy. Under a 2 MiB/s
// limit set between rounds, the bucket's own account grants at least the
// bytes round 2 read, at no more than the limit (with slack: a loaded
// machine only slows it), and the round lasts at least as long as the
// limit allows for those bytes.
func TestWarmRoundsAreLimited(t *testing.T) {
	t.Parallel() // see doc.go
	w := newWorld(t)
	src := testenv.NewTestVM(t, w.lv, testenv.VMOptions{RandomBytes: 4 << 20})
	name := w.createJob(w.warmSpec(src, false))
	if j := w.rounds(name, 1); terminal(j) {
		t.Fatalf("job ended %s before its first round: %s", j.GetState(), j.GetReason())
	}
	const limit = 2 << 20 // bytes per second
	asked := time.Now()
	w.setBandwidth(nil, proto.String("16778Kbps"))
	lowered := w.waitLimits(16778000, asked.Add(-time.Second), 30*time.Second)
	changed := w.write(src, guestWrite{0, 8 << 20, 3 << 20, 0xe1}, guestWrite{1, 16 << 20, 3 << 20, 0xe2})
	j := w.rounds(name, 2)
	if terminal(j) {
		t.Fatalf("job ended %s: %s", j.GetState(), j.GetReason())
	}
	r2 := j.GetPrecopyRounds()[1]
	w.setBandwidth(nil, proto.String(""))
	lifted := w.waitLimits(0, lowered.at, 30*time.Second)

	granted := lifted.granted - lowered.granted
	window := lifted.at.Sub(lowered.at).Seconds()
	burst := float64(limit) / 20
	t.Logf("round 2: changed %d, read %d in %v; bucket granted %d bytes in %.2f s", r2.GetChangedBytes(), r2.GetReadBytes(),
		r2.GetDuration().AsDuration(), granted, window)
	if r2.GetChangedBytes() != changed || r2.GetReadBytes() < changed {
		t.Errorf("round 2 changed %d and read %d bytes; want the %d written", r2.GetChangedBytes(), r2.GetReadBytes(), changed)
	}
	if granted < r2.GetReadBytes() {
		t.Errorf("the downstream bucket granted %d bytes while limited, fewer than the %d round 2 read: the round bypassed it",
			granted, r2.GetReadBytes())
	}
	if max := 1.5*limit*window + burst; float64(granted) > max {
		t.Errorf("the bucket granted %d bytes in %.2f s, more than %.0f (2 MiB/s × 1.5 + burst)", granted, window, max)
	}
	if min := time.Duration((float64(r2.GetReadBytes()) - burst) / limit * float64(time.Second)); r2.GetDuration().AsDuration() < min {
		t.Errorf("round 2 read %d bytes in %v under a 2 MiB/s limit; want at least %v", r2.GetReadBytes(), r2.GetDuration().AsDuration(), min)
	}
	if _, err := w.f.client.Jobs().CancelMigrationJob(ctx(t, 10*time.Second), &ferryv1.CancelMigrationJobRequest{Name: name}); err != nil {
		t.Fatal(err)
	}
	w.expectNoCheckpoints(src)
}
