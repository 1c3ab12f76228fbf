package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"
	"github.com/ferry-v2v/ferry/pkg/testkit"
)

const syncing = ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_SYNCING

// guestWrite is a write made into a running test VM's disk through the
// QEMU monitor (qemu-io on the disk's device), as a guest would write.
type guestWrite struct {
	disk        int   // 0 = vda, 1 = vdb
	off, length int64 // multiples of 64 KiB, the dirty bitmaps' granularity
	pattern     byte  // 0 writes zeroes
}

// write makes ws on the running VM.
func (w *world) write(vm *testenv.TestVM, ws ...guestWrite) (bytes int64) {
	w.t.Helper()
	for _, g := range ws {
		cmd := fmt.Sprintf("write -P 0x%02x %d %d", g.pattern, g.off, g.length)
		if g.pattern == 0 {
			cmd = fmt.Sprintf("write -z %d %d", g.off, g.length)
		}
		out := w.lv.Virsh(w.t, "qemu-monitor-command", vm.Name, "--hmp",
			fmt.Sprintf(`qemu-io -d /machine/peripheral/virtio-disk%d/virtio-backend "%s"`, g.disk, cmd))
		if strings.Contains(out, "rror") {
			w.t.Fatalf("qemu-io %s on disk %d: %s", cmd, g.disk, out)
		}
		bytes += g.length
	}
	return bytes
}

// rounds waits until the job recorded n precopy rounds (or ended).
func (w *world) rounds(name string, n int) *ferryv1.MigrationJob {
	w.t.Helper()
	return w.waitJob(name, 90*time.Second, fmt.Sprintf("precopy round %d", n), func(j *ferryv1.MigrationJob) bool {
		return terminal(j) || len(j.GetPrecopyRounds()) >= n
	})
}

// expectCutOverRounds checks that the warm job j SUCCEEDED with at least
// min rounds, numbered 1, 2, ... once each, the last final, and returns
// its rounds.
func expectCutOverRounds(t *testing.T, j *ferryv1.MigrationJob, min int) []*ferryv1.PrecopyRound {
	t.Helper()
	if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
		t.Fatalf("job ended %s in %s: %s", j.GetState(), j.GetPhase(), j.GetReason())
	}
	rs := j.GetPrecopyRounds()
	for i, r := range rs {
		if r.GetNumber() != int32(i+1) {
			t.Errorf("rounds = %v; want numbered 1, 2, ... once each", rs)
			break
		}
	}
	if len(rs) < min || !rs[len(rs)-1].GetFinal() {
		t.Fatalf("rounds = %v; want at least %d, the last final", rs, min)
	}
	return rs
}

// checkpoints lists the VM's libvirt checkpoints and the bitmaps in its
// disk images.
func checkpoints(t testing.TB, lv *testenv.Libvirt, vm *testenv.TestVM) []string {
	t.Helper()
	var out []string
	for _, l := range strings.Fields(lv.Virsh(t, "checkpoint-list", vm.Name, "--name")) {
		out = append(out, "checkpoint "+l)
	}
	for _, d := range vm.Disks {
		b, err := exec.Command("qemu-img", "info", "-U", "--output=json", d.Path).Output()
		if err != nil {
			t.Fatalf("qemu-img info %s: %v", d.Path, err)
		}
		var info struct {
			FormatSpecific struct {
				Data struct {
					Bitmaps []struct{ Name string } `json:"bitmaps"`
				} `json:"data"`
			} `json:"format-specific"`
		}
		if err := json.Unmarshal(b, &info); err != nil {
			t.Fatal(err)
		}
		for _, bm := range info.FormatSpecific.Data.Bitmaps {
			out = append(out, d.Target+" bitmap "+bm.Name)
		}
	}
	return out
}

// testShutdownTimeout is the guest shutdown timeout of the warm tests
// whose VMs run no OS and ignore the ACPI power button: their cutover
// asks for a shutdown, waits this long and powers the VM off.
const testShutdownTimeout = 3 * time.Second

// shutdownTimeout sets the coordinator's guest shutdown timeout.
func (w *world) shutdownTimeout(d time.Duration) {
	w.t.Helper()
	_, err := w.f.client.Settings().UpdateSettings(ctx(w.t, 10*time.Second), &ferryv1.UpdateSettingsRequest{
		Settings:   &ferryv1.Settings{GuestShutdownTimeout: durationpb.New(d)},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"guest_shutdown_timeout"}}})
	must(w.t, err)
}

// expectPoweredOffAfterTimeout checks that the warm job's cutover asked
// the guest to shut down and, the guest not answering, destroyed the VM
// after the timeout: the domain's shut-off reason, the job's warning, and
// a downtime no shorter than the timeout.
func expectPoweredOffAfterTimeout(t *testing.T, w *world, src *testenv.TestVM, j *ferryv1.MigrationJob) {
	t.Helper()
	if st := strings.TrimSpace(w.lv.Virsh(t, "domstate", "--reason", src.Name)); st != "shut off (destroyed)" {
		t.Errorf("source VM is %q; want shut off (destroyed) after the guest shutdown timeout", st)
	}
	want := fmt.Sprintf("did not shut down within the guest shutdown timeout (%s); the VM was powered off for the cutover", testShutdownTimeout)
	if !slices.ContainsFunc(j.GetWarnings(), func(s string) bool { return strings.Contains(s, want) }) {
		t.Errorf("warnings = %q; want one saying %q", j.GetWarnings(), want)
	}
	if down := j.GetMeasuredDowntime().AsDuration(); down < testShutdownTimeout {
		t.Errorf("measured downtime %v; want at least the %v the guest was given to shut down", down, testShutdownTimeout)
	}
}

// expectPattern checks that the image at path holds pattern over the
// length bytes at off (qemu-io read -P).
func expectPattern(t *testing.T, path string, off, length int64, pattern byte) {
	t.Helper()
	out, err := exec.Command("qemu-io", "-r", "-U", "-c", fmt.Sprintf("read -P 0x%02x %d %d", pattern, off, length), path).CombinedOutput()
	if err != nil || strings.Contains(string(out), "verification failed") || !strings.Contains(string(out), "read ") {
		t.Errorf("%s at %d (+%d) does not hold 0x%02x: %v: %s", path, off, length, pattern, err, out)
	}
}

// TestWarmKVM: a warm job of a running VM whose disks are written between
// rounds runs a full round, delta rounds that read only what changed, and
// a cutover by guest shutdown (the guest, with no OS, ignores it: the VM
// is powered off after the timeout) whose last round reads the shut-off
// images with the previous round's bitmaps; the target disks then equal
// the source's as it stopped, with what was written after the last
// SYNCING round, and no checkpoint or bitmap is left on the source.
func TestWarmKVM(t *testing.T) {
	t.Parallel() // see doc.go
	start := time.Now()
	w := newWorld(t)
	w.shutdownTimeout(testShutdownTimeout)
	src := testenv.NewTestVM(t, w.lv, testenv.VMOptions{RandomBytes: 8 << 20})
	spec := w.spec(w.sourceVM(w.source, src.Name), &ferryv1.MigrationOptions{
		Mode: ferryv1.MigrationMode_MIGRATION_MODE_WARM, PrecopyInterval: durationpb.New(10 * time.Second)})
	name := w.createJob(spec)
	j := w.rounds(name, 1)
	if terminal(j) {
		t.Fatalf("job ended %s before its first round: %s", j.GetState(), j.GetReason())
	}
	first := j.GetPrecopyRounds()[0]
	t.Logf("round 1 (full): changed %d, read %d, took %v", first.GetChangedBytes(), first.GetReadBytes(), first.GetDuration().AsDuration())

	// Round 2: three separate writes (one extent each) on both disks.
	kib := int64(1024)
	changes := []guestWrite{{0, 1 << 20, 64 * kib, 0xa1}, {0, 30 << 20, 192 * kib, 0xa2}, {1, 200 << 20, 1 << 20, 0xa3}}
	changed := w.write(src, changes...)
	j = w.rounds(name, 2)
	if j.GetPhase() != syncing && !terminal(j) {
		t.Errorf("phase between rounds = %s; want SYNCING", j.GetPhase())
	}
	r2 := j.GetPrecopyRounds()[1]
	if r2.GetChangedBytes() != changed {
		t.Errorf("round 2 changed %d bytes; want the %d written", r2.GetChangedBytes(), changed)
	}
	if max := changed + int64(len(changes))*64*kib; r2.GetReadBytes() > max || r2.GetReadBytes() < changed {
		t.Errorf("round 2 read %d bytes; want %d to %d (changed + one 64 KiB granule per change)", r2.GetReadBytes(), changed, max)
	}
	if r2.GetUploadedBytes() != r2.GetReadBytes() {
		t.Errorf("round 2 uploaded %d bytes; want the %d it read", r2.GetUploadedBytes(), r2.GetReadBytes())
	}
	if r2.GetEstimatedDowntime() == nil {
		t.Error("round 2 has no estimated downtime")
	}

	// Round 3: an overwrite, zeroes over data, and a new extent.
	changed = w.write(src, guestWrite{0, 1 << 20, 64 * kib, 0xb1}, guestWrite{1, 100 << 20, 1 << 20, 0}, guestWrite{1, 150 << 20, 512 * kib, 0xb3})
	j = w.rounds(name, 3)
	if r3 := j.GetPrecopyRounds()[2]; r3.GetChangedBytes() != changed {
		t.Errorf("round 3 changed %d bytes; want %d", r3.GetChangedBytes(), changed)
	}

	// The last delta, then the cutover.
	last := w.write(src, guestWrite{0, 50 << 20, 256 * kib, 0xc1}, guestWrite{1, 10 << 20, 128 * kib, 0xc2})
	out, err := w.f.ferryctl("job", "get", name)
	if err != nil || !strings.Contains(out, "RUNNING/SYNCING") || !strings.Contains(out, "EST. DOWNTIME") {
		t.Errorf("ferryctl job get while SYNCING: %v\n%s", err, out)
	}
	if out, err := w.f.ferryctl("job", "cutover", name); err != nil || !strings.Contains(out, "cuts over at") {
		t.Fatalf("ferryctl job cutover: %v\n%s", err, out)
	}
	j = w.waitJob(name, 2*time.Minute, "the job to end", terminal)
	rs := expectCutOverRounds(t, j, 4)
	final := rs[len(rs)-1]
	if final.GetChangedBytes() < last {
		t.Errorf("the final round changed %d bytes; want at least the %d written last", final.GetChangedBytes(), last)
	}
	down := j.GetMeasuredDowntime().AsDuration()
	if down <= 0 {
		t.Errorf("measured downtime %v", down)
	}
	t.Logf("final round: changed %d, read %d, took %v; measured downtime %v; full round took %v",
		final.GetChangedBytes(), final.GetReadBytes(), final.GetDuration().AsDuration(), down, first.GetDuration().AsDuration())

	if out, err := w.f.ferryctl("job", "get", name); err != nil || !strings.Contains(out, "Measured downtime") || !strings.Contains(out, "(cutover)") {
		t.Errorf("ferryctl job get after the cutover: %v\n%s", err, out)
	} else {
		t.Logf("ferryctl job get:\n%s", out)
	}
	testkit.WaitFor(t, 30*time.Second, "the source VM to be powered off", func() bool { return src.State(t) == "shut off" })
	expectPoweredOffAfterTimeout(t, w, src, j)
	for _, d := range src.Disks {
		compare(t, d.Path, w.volume(name, d.Target))
	}
	expectPattern(t, w.volume(name, "vda"), 50<<20, 256*kib, 0xc1)
	expectPattern(t, w.volume(name, "vdb"), 10<<20, 128*kib, 0xc2)
	if left := checkpoints(t, w.lv, src); len(left) > 0 {
		t.Errorf("left on the source: %v", left)
	}
	if left := leftovers(src); len(left) > 0 {
		t.Errorf("backup files left on the source: %v", left)
	}
	if st := w.lv.Virsh(t, "domstate", spec.GetTarget().GetVmName()); !strings.Contains(st, "running") {
		t.Errorf("target VM is %q; want running", st)
	}
	t.Logf("TestWarmKVM took %v", time.Since(start).Round(100*time.Millisecond))
}

// warmSpec is a warm job of vm with 10 s between rounds.
func (w *world) warmSpec(vm *testenv.TestVM, cutoverNow bool) *ferryv1.MigrationJobSpec {
	opts := &ferryv1.MigrationOptions{Mode: ferryv1.MigrationMode_MIGRATION_MODE_WARM, PrecopyInterval: durationpb.New(10 * time.Second)}
	if cutoverNow {
		opts.CutoverTime = timestamppb.Now()
	}
	return w.spec(w.sourceVM(w.source, vm.Name), opts)
}

// expectNoCheckpoints waits until the job's rollback and EndWarm left no
// checkpoint, bitmap or backup file on the source.
func (w *world) expectNoCheckpoints(src *testenv.TestVM) {
	w.t.Helper()
	var left []string
	testkit.WaitFor(w.t, 60*time.Second, "the checkpoints to go", func() bool {
		left = append(checkpoints(w.t, w.lv, src), leftovers(src)...)
		return len(left) == 0
	})
}

// TestWarmKVMCancelAndFailure: a warm job cancelled while SYNCING, and
// one whose cutover fails defining the target (before it stops the
// source), and those whose target does not boot after the source was shut
// down (powered off after the timeout) or paused, leave no target volume,
// no target VM of theirs and no checkpoint, and the source VM running.
func TestWarmKVMCancelAndFailure(t *testing.T) {
	t.Parallel() // see doc.go
	start := time.Now()
	w := newWorldWith(t, worldOptions{agentArgs: []string{"--verify-boot-timeout", "20s"}})
	w.shutdownTimeout(testShutdownTimeout)
	t.Run("cancel while syncing", func(t *testing.T) {
		src := testenv.NewTestVM(t, w.lv, testenv.VMOptions{})
		spec := w.warmSpec(src, false)
		name := w.createJob(spec)
		j := w.waitJob(name, 90*time.Second, "SYNCING", func(j *ferryv1.MigrationJob) bool {
			return terminal(j) || j.GetPhase() == syncing
		})
		if terminal(j) {
			t.Fatalf("job ended %s before SYNCING: %s", j.GetState(), j.GetReason())
		}
		if n := len(checkpoints(t, w.lv, src)); n == 0 {
			t.Error("no checkpoint on the source while SYNCING")
		}
		_, err := w.f.client.Jobs().CancelMigrationJob(ctx(t, 10*time.Second), &ferryv1.CancelMigrationJobRequest{Name: name})
		must(t, err)
		w.expectVolumesGone(name)
		w.expectNoCheckpoints(src)
		if _, err := w.lv.TryVirsh("domstate", spec.GetTarget().GetVmName()); err == nil {
			t.Errorf("target VM %s exists after the cancel", spec.GetTarget().GetVmName())
		}
		if st := src.State(t); st != "running" {
			t.Errorf("source VM is %s after the cancel; want running", st)
		}
	})
	t.Run("cutover fails", func(t *testing.T) {
		src := testenv.NewTestVM(t, w.lv, testenv.VMOptions{})
		spec := w.warmSpec(src, true)
		squatter := testenv.NewTestVM(t, w.lv, testenv.VMOptions{Name: spec.GetTarget().GetVmName()})
		name := w.createJob(spec)
		j := w.waitJob(name, 2*time.Minute, "the job to end", terminal)
		// The target VM is defined before the source stops: the cutover
		// fails there, in SYNCING, with no final round.
		if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED || j.GetPhase() != syncing {
			t.Fatalf("job ended %s in %s: %s", j.GetState(), j.GetPhase(), j.GetReason())
		}
		if rs := j.GetPrecopyRounds(); len(rs) != 1 || rs[0].GetFinal() {
			t.Errorf("rounds = %v; want the first only", rs)
		}
		if !strings.Contains(j.GetReason(), squatter.Name) {
			t.Errorf("reason does not name the domain in the way: %q", j.GetReason())
		}
		w.expectVolumesGone(name)
		w.expectNoCheckpoints(src)
		testkit.WaitFor(t, 30*time.Second, "the source VM to run again", func() bool { return src.State(t) == "running" })
		if st := squatter.State(t); st != "running" {
			t.Errorf("the domain that was there first is %s; Ferry must leave it alone", st)
		}
	})
	for _, pause := range []bool{false, true} {
		stop := map[bool]string{false: "shutdown", true: "pause"}[pause]
		t.Run("target does not boot after the "+stop, func(t *testing.T) {
			// verify_boot on a guest with no OS: the cutover stops the
			// source (shut down, powered off after the timeout, or
			// paused), moves the last delta, starts the target, and fails
			// when no boot shows within the agent's 20 s. The source runs
			// again.
			src := testenv.NewTestVM(t, w.lv, testenv.VMOptions{})
			spec := w.warmSpec(src, true)
			spec.Options.VerifyBoot = true
			spec.Options.PauseSourceVm = pause
			name := w.createJob(spec)
			j := w.waitJob(name, 3*time.Minute, "the job to end", terminal)
			if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED || j.GetPhase() != configuring ||
				!strings.Contains(j.GetReason(), "did not show it booted within 20s") {
				t.Fatalf("job ended %s in %s: %s; want FAILED in CONFIGURING for want of a boot", j.GetState(), j.GetPhase(), j.GetReason())
			}
			if rs := j.GetPrecopyRounds(); len(rs) < 2 || !rs[len(rs)-1].GetFinal() {
				t.Errorf("rounds = %v; want the first and the cutover's", rs)
			}
			w.expectVolumesGone(name)
			w.expectNoCheckpoints(src)
			testkit.WaitFor(t, 30*time.Second, "the source VM to run again", func() bool { return src.State(t) == "running" })
			if _, err := w.lv.TryVirsh("domstate", spec.GetTarget().GetVmName()); err == nil {
				t.Errorf("target VM %s exists after the failed cutover", spec.GetTarget().GetVmName())
			}
			started := slices.ContainsFunc(w.f.agents[w.host].lines("source VM started again: the cutover did not finish"),
				func(l string) bool { return strings.Contains(l, path.Base(name)) })
			if !pause && !started {
				t.Error("the agent's log does not say it started the source VM again")
			}
		})
	}
	t.Logf("TestWarmKVMCancelAndFailure took %v", time.Since(start).Round(100*time.Millisecond))
}

// TestWarmKVMAgentKilled: an agent killed between rounds resumes, once
// back, at the next round from its last completed one, not with a new
// full copy; the target still ends identical to the source.
func TestWarmKVMAgentKilled(t *testing.T) {
	t.Parallel() // see doc.go
	start := time.Now()
	w := newWorld(t)
	w.shutdownTimeout(testShutdownTimeout)
	src := testenv.NewTestVM(t, w.lv, testenv.VMOptions{RandomBytes: 4 << 20})
	spec := w.warmSpec(src, false)
	name := w.createJob(spec)
	j := w.rounds(name, 1)
	if terminal(j) {
		t.Fatalf("job ended %s: %s", j.GetState(), j.GetReason())
	}
	w.f.agents[w.host].kill()
	kib := int64(1024)
	changed := w.write(src, guestWrite{0, 2 << 20, 128 * kib, 0xd1}, guestWrite{1, 64 << 20, 64 * kib, 0xd2})
	w.f.startAgent(w.host, w.cacheDir)
	j = w.rounds(name, 2)
	if terminal(j) {
		t.Fatalf("job ended %s after the agent came back: %s", j.GetState(), j.GetReason())
	}
	r2 := j.GetPrecopyRounds()[1]
	if r2.GetNumber() != 2 || r2.GetChangedBytes() != changed {
		t.Errorf("round after the restart: number %d, changed %d; want round 2 of the %d bytes written", r2.GetNumber(), r2.GetChangedBytes(), changed)
	}
	if _, err := w.f.client.Jobs().CutoverMigrationJob(ctx(t, 10*time.Second), &ferryv1.CutoverMigrationJobRequest{Name: name}); err != nil {
		t.Fatal(err)
	}
	expectCutOverRounds(t, w.waitJob(name, 2*time.Minute, "the job to end", terminal), 3)
	testkit.WaitFor(t, 30*time.Second, "the source VM to be powered off", func() bool { return src.State(t) == "shut off" })
	for _, d := range src.Disks {
		compare(t, d.Path, w.volume(name, d.Target))
	}
	if left := checkpoints(t, w.lv, src); len(left) > 0 {
		t.Errorf("left on the source: %v", left)
	}
	t.Logf("TestWarmKVMAgentKilled took %v", time.Since(start).Round(100*time.Millisecond))
}

// TestWarmKVMDowntime: the cutover of a VM with 512 MiB of data and
// 64 MiB changed in its last round moves only those 64 MiB while the
// source is stopped (asserted in bytes); the rounds' durations and the
// measured downtime are logged. The job pauses the source
// (pause_source_vm: a guest with no OS would only make a shutdown wait
// for its timeout), which stays paused after the cutover.
func TestWarmKVMDowntime(t *testing.T) {
	t.Parallel() // see doc.go
	start := time.Now()
	w := newWorld(t)
	src := testenv.NewTestVM(t, w.lv, testenv.VMOptions{RandomBytes: 512 << 20})
	spec := w.warmSpec(src, false)
	spec.Options.PauseSourceVm = true
	name := w.createJob(spec)
	j := w.rounds(name, 1)
	if terminal(j) {
		t.Fatalf("job ended %s: %s", j.GetState(), j.GetReason())
	}
	first := j.GetPrecopyRounds()[0]
	last := w.write(src, guestWrite{1, 32 << 20, 64 << 20, 0xe1})
	if _, err := w.f.client.Jobs().CutoverMigrationJob(ctx(t, 10*time.Second), &ferryv1.CutoverMigrationJobRequest{Name: name}); err != nil {
		t.Fatal(err)
	}
	j = w.waitJob(name, 3*time.Minute, "the job to end", terminal)
	if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
		t.Fatalf("job ended %s in %s: %s", j.GetState(), j.GetPhase(), j.GetReason())
	}
	rs := j.GetPrecopyRounds()
	final := rs[len(rs)-1]
	var changedBefore int64
	for _, r := range rs[1 : len(rs)-1] {
		changedBefore += r.GetChangedBytes()
	}
	if final.GetChangedBytes()+changedBefore != last || final.GetReadBytes() > last {
		t.Errorf("the cutover moved %d bytes (changed %d, %d in rounds before); want the %d written last",
			final.GetReadBytes(), final.GetChangedBytes(), changedBefore, last)
	}
	down := j.GetMeasuredDowntime().AsDuration()
	var configure time.Duration
	for _, p := range j.GetPhaseTimings() {
		if p.GetPhase() == configuring {
			configure = p.GetEndTime().AsTime().Sub(p.GetStartTime().AsTime())
		}
	}
	t.Logf("full round: %d bytes in %v; cutover round: %d bytes in %v; CONFIGURING %v; measured downtime %v (%.0f%% of the full round)",
		first.GetReadBytes(), first.GetDuration().AsDuration(), final.GetReadBytes(), final.GetDuration().AsDuration(),
		configure, down, 100*down.Seconds()/first.GetDuration().AsDuration().Seconds())
	// The durations are figures to read, not to assert: on a loaded
	// machine a round's fixed costs (connect, backup begin and end) can
	// take as long as its data. What the cutover moved is asserted above.
	for _, d := range src.Disks {
		compare(t, d.Path, w.volume(name, d.Target))
	}
	if st := src.State(t); st != "paused" {
		t.Errorf("source VM is %s after the cutover; want paused (pause_source_vm)", st)
	}
	if left := checkpoints(t, w.lv, src); len(left) > 0 {
		t.Errorf("left on the source: %v", left)
	}
	t.Logf("TestWarmKVMDowntime took %v", time.Since(start).Round(100*time.Millisecond))
}

// TestWarmKVMJanitor: the checkpoints of a warm job whose agent crashed
// stay while its cache can still resume it, and the agent's janitor
// deletes them once the cache is gone (the job was cancelled meanwhile and
// its cache reclaimed): of a VM still running, and of one shut off since
// (libvirt keeps their bitmaps: the janitor removes them from the images).
func TestWarmKVMJanitor(t *testing.T) {
	t.Parallel() // see doc.go
	start := time.Now()
	w := newWorld(t)
	running := testenv.NewTestVM(t, w.lv, testenv.VMOptions{})
	off := testenv.NewTestVM(t, w.lv, testenv.VMOptions{})
	var names []string
	for _, src := range []*testenv.TestVM{running, off} {
		names = append(names, w.createJob(w.warmSpec(src, false)))
	}
	for _, name := range names {
		if j := w.rounds(name, 1); terminal(j) {
			t.Fatalf("job ended %s: %s", j.GetState(), j.GetReason())
		}
	}
	w.f.agents[w.host].kill()
	for _, src := range []*testenv.TestVM{running, off} {
		if len(checkpoints(t, w.lv, src)) == 0 {
			t.Fatalf("no checkpoint on %s after the first round", src.Name)
		}
	}
	w.lv.Virsh(t, "destroy", off.Name)
	for _, name := range names {
		_, err := w.f.client.Jobs().CancelMigrationJob(ctx(t, 10*time.Second), &ferryv1.CancelMigrationJobRequest{Name: name})
		must(t, err)
		if err := os.RemoveAll(filepath.Join(w.cacheDir, path.Base(name))); err != nil {
			t.Fatal(err)
		}
	}
	w.f.startAgent(w.host, w.cacheDir)
	w.expectNoCheckpoints(running)
	w.expectNoCheckpoints(off)
	if st := off.State(t); st != "shut off" {
		t.Errorf("the shut-off source VM is %s after the janitor; want shut off", st)
	}
	t.Logf("TestWarmKVMJanitor took %v", time.Since(start).Round(100*time.Millisecond))
}
