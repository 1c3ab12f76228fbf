package e2e

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

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

// TestWarmKVM: a warm job of a running VM whose disks are written between
// rounds runs a full round, delta rounds that read only what changed, and
// a cutover; the target disks then equal the source's as it stopped, and
// no checkpoint or bitmap is left on the source.
func TestWarmKVM(t *testing.T) {
	start := time.Now()
	w := newWorld(t)
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
	if _, err := w.f.client.Jobs().CutoverMigrationJob(ctx(t, 10*time.Second), &ferryv1.CutoverMigrationJobRequest{Name: name}); err != nil {
		t.Fatal(err)
	}
	j = w.waitJob(name, 2*time.Minute, "the job to end", terminal)
	if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
		t.Fatalf("job ended %s in %s: %s", j.GetState(), j.GetPhase(), j.GetReason())
	}
	rs := j.GetPrecopyRounds()
	if len(rs) < 4 || !rs[len(rs)-1].GetFinal() {
		t.Fatalf("rounds = %v; want at least 3 and the final one", rs)
	}
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

	testkit.WaitFor(t, 30*time.Second, "the source VM to be powered off", func() bool { return src.State(t) == "shut off" })
	for _, d := range src.Disks {
		compare(t, d.Path, w.volume(name, d.Target))
	}
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
