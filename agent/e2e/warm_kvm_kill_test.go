package e2e

import (
	"os/exec"
	"path"
	"slices"
	"strings"
	"testing"
	"time"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"
	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// TestWarmKVMAgentKilledInCutover: the agent of a warm KVM job is killed
// (SIGKILL) while its cutover waits for the guest to shut down; the guest
// goes on writing and then shuts down (the test powers it off) while the
// agent is dead. The agent back finds the source shut off, and knows from
// the job's cache that the cutover stopped it: it finishes the cutover
// from the shut-off images, every write made before the stop on the
// target, the downtime counted from the stop; or, when the cutover then
// fails (the round's checkpoint is gone), starts the source again though
// it found it off, and leaves no target VM, volume or checkpoint.
func TestWarmKVMAgentKilledInCutover(t *testing.T) {
	t.Parallel() // see doc.go
	start := time.Now()
	w := newWorld(t)
	// Long enough that the kill always comes inside the wait.
	w.shutdownTimeout(2 * time.Minute)
	for _, fails := range []bool{false, true} {
		t.Run(map[bool]string{false: "the cutover succeeds", true: "the cutover then fails"}[fails], func(t *testing.T) {
			src := testenv.NewTestVM(t, w.lv, testenv.VMOptions{RandomBytes: 4 << 20})
			spec := w.warmSpec(src, false)
			name := w.createJob(spec)
			if j := w.rounds(name, 1); terminal(j) {
				t.Fatalf("job ended %s: %s", j.GetState(), j.GetReason())
			}
			kib := int64(1024)
			w.write(src, guestWrite{0, 1 << 20, 128 * kib, 0xc1})
			agent := w.f.agents[w.host]
			asked := len(agent.lines("guest shutdown requested for the cutover"))
			_, err := w.f.client.Jobs().CutoverMigrationJob(ctx(t, 10*time.Second), &ferryv1.CutoverMigrationJobRequest{Name: name})
			must(t, err)
			testkit.WaitFor(t, 2*time.Minute, "the cutover to ask the guest to shut down", func() bool {
				return len(agent.lines("guest shutdown requested for the cutover")) > asked
			})
			agent.kill()
			killed := time.Now()
			// The guest writes on, then shuts down, while the agent is dead.
			w.write(src, guestWrite{1, 32 << 20, 64 * kib, 0xc2})
			w.lv.Virsh(t, "destroy", src.Name)
			if fails {
				for _, cp := range strings.Fields(w.lv.Virsh(t, "checkpoint-list", src.Name, "--name")) {
					w.lv.Virsh(t, "checkpoint-delete", src.Name, cp, "--metadata")
					for _, d := range src.Disks {
						if out, err := exec.Command("qemu-img", "bitmap", "--remove", d.Path, cp).CombinedOutput(); err != nil {
							t.Fatalf("qemu-img bitmap --remove %s %s: %v: %s", d.Path, cp, err, out)
						}
					}
				}
			}
			time.Sleep(time.Second) // a downtime the restart cannot have measured alone
			dead := time.Since(killed)
			w.f.startAgent(w.host, w.cacheDir)
			back := w.f.agents[w.host]
			j := w.waitJob(name, 3*time.Minute, "the job to end", terminal)
			adopted := slices.ContainsFunc(back.lines("the source VM was stopped for the cutover by the agent before this one"),
				func(l string) bool { return strings.Contains(l, path.Base(name)) })
			if !adopted {
				t.Error("the agent back does not say it found the source stopped by the agent before it")
			}
			if fails {
				if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED || !strings.Contains(j.GetReason(), "is gone") {
					t.Fatalf("job ended %s in %s: %s; want FAILED for the checkpoint that is gone", j.GetState(), j.GetPhase(), j.GetReason())
				}
				testkit.WaitFor(t, time.Minute, "the source VM to run again", func() bool { return src.State(t) == "running" })
				w.expectVolumesGone(name)
				w.expectNoCheckpoints(src)
				if _, err := w.lv.TryVirsh("domstate", spec.GetTarget().GetVmName()); err == nil {
					t.Errorf("target VM %s exists after the failed cutover", spec.GetTarget().GetVmName())
				}
				return
			}
			rs := expectCutOverRounds(t, j, 2)
			if st := src.State(t); st != "shut off" {
				t.Errorf("source VM is %s after the cutover; want shut off", st)
			}
			for _, d := range src.Disks {
				compare(t, d.Path, w.volume(name, d.Target))
			}
			w.expectNoCheckpoints(src)
			if down := j.GetMeasuredDowntime().AsDuration(); down < dead {
				t.Errorf("measured downtime %v; want at least the %v the agent was dead (the source stopped before the kill)", down, dead)
			}
			t.Logf("rounds %v; measured downtime %v", rs, j.GetMeasuredDowntime().AsDuration())
		})
	}
	t.Logf("TestWarmKVMAgentKilledInCutover took %v", time.Since(start).Round(100*time.Millisecond))
}
