package e2e

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"
	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// snapshotWorld is a world whose agent copies the running VMs of its
// source by the snapshot method (--kvm-force-snapshot), with more agent
// flags when given.
func snapshotWorld(t *testing.T, extra ...string) *world {
	t.Helper()
	w := newWorld(t)
	w.f.agentArgs = append([]string{"--kvm-force-snapshot", w.source}, extra...)
	w.restartAgent(syscall.SIGTERM)
	return w
}

// restartAgent stops the agent with sig and starts it again with
// w.f.agentArgs.
func (w *world) restartAgent(sig syscall.Signal) *proc {
	w.t.Helper()
	w.f.agents[w.host].stop(sig)
	return w.f.startAgent(w.host, w.cacheDir)
}

// monitorWrite writes pattern over [off, off+length) of a running VM's disk
// (0 vda, 1 vdb) through its QEMU, as its guest would.
func monitorWrite(t *testing.T, w *world, vm *testenv.TestVM, disk int, pattern byte, off, length int64) {
	t.Helper()
	out := w.lv.Virsh(t, "qemu-monitor-command", vm.Name, "--hmp",
		fmt.Sprintf(`qemu-io -d /machine/peripheral/virtio-disk%d/virtio-backend "write -P 0x%02x %d %d"`, disk, pattern, off, length))
	if strings.Contains(out, "rror") {
		t.Fatalf("qemu-io write on %s disk %d: %s", vm.Name, disk, out)
	}
}

// holds says whether the image (through its backing chain) holds pattern
// over the range.
func holds(d testenv.TestDisk, pattern byte, off, length int64) bool {
	return exec.Command("qemu-io", "-r", "-U", "-f", d.Format, "-c",
		fmt.Sprintf("read -q -P 0x%02x %d %d", pattern, off, length), d.Path).Run() == nil
}

// snapshotRefs copies each disk of vm into a raw file: the disks as a
// snapshot taken now would hold them.
func snapshotRefs(t *testing.T, vm *testenv.TestVM) []string {
	t.Helper()
	var out []string
	for _, d := range vm.Disks {
		ref := filepath.Join(t.TempDir(), d.Target+".raw")
		testenv.Run(t, "qemu-img", "convert", "-U", "-f", d.Format, "-O", "raw", d.Path, ref)
		out = append(out, ref)
	}
	return out
}

// domDisks is the VM's disk sources, live or as defined.
func domDisks(t *testing.T, w *world, vm *testenv.TestVM, inactive bool) []string {
	t.Helper()
	args := []string{"domblklist", vm.Name}
	if inactive {
		args = append(args, "--inactive")
	}
	var out []string
	for _, line := range strings.Split(w.lv.Virsh(t, args...), "\n") {
		if f := strings.Fields(line); len(f) == 2 && strings.HasPrefix(f[0], "vd") {
			out = append(out, f[1])
		}
	}
	return out
}

// onOverlays says whether the running VM's disks are Ferry's overlays.
func onOverlays(t *testing.T, w *world, vm *testenv.TestVM) bool {
	t.Helper()
	for _, p := range domDisks(t, w, vm, false) {
		if !strings.HasPrefix(filepath.Base(p), "ferry-backup-"+vm.UUID) {
			return false
		}
	}
	return true
}

// expectOnOriginals checks that the source VM runs on its original
// images, live and as defined, with no block job, and that no overlay,
// socket or qemu-nbd of the snapshot is left.
func expectOnOriginals(t *testing.T, w *world, vm *testenv.TestVM) {
	t.Helper()
	testkit.WaitFor(t, 90*time.Second, "the source VM back on its original images with nothing left", func() bool {
		return !onOverlays(t, w, vm) && len(leftovers(vm)) == 0 && len(coldServers(vm)) == 0
	})
	want := []string{vm.Disks[0].Path, vm.Disks[1].Path}
	if got := domDisks(t, w, vm, false); !slices.Equal(got, want) {
		t.Errorf("source VM runs on %v, want its original images %v", got, want)
	}
	if got := domDisks(t, w, vm, true); !slices.Equal(got, want) {
		t.Errorf("source VM is defined on %v, want its original images %v", got, want)
	}
	for _, d := range []string{"vda", "vdb"} {
		if out := w.lv.Virsh(t, "blockjob", vm.Name, d, "--raw"); strings.Contains(out, "type=") {
			t.Errorf("source disk %s still has a block job: %s", d, out)
		}
	}
	if st := vm.State(t); st != "running" {
		t.Errorf("source VM is %s, want running", st)
	}
}

// TestSnapshotMigration moves a running VM by the snapshot method, forced
// on this machine's libvirt (which has the backup API): its root disk a
// qcow2 on a backing file, its data disk raw. The guest writes on while
// the disks are copied: the target volumes equal the disks at the
// snapshot, the writes are in the source's original images afterwards
// (the block commit merged them), and the source runs on its original
// disk paths with no overlay file left.
func TestSnapshotMigration(t *testing.T) {
	t.Parallel() // see doc.go
	t.Run("qemu-nbd", func(t *testing.T) { testSnapshotMigration(t) })
	// The reader of hosts without qemu-nbd: qemu-img map, dd over SSH.
	t.Run("image files", func(t *testing.T) { testSnapshotMigration(t, "--kvm-image-file-reader") })
}

func testSnapshotMigration(t *testing.T, agentArgs ...string) {
	w := snapshotWorld(t, agentArgs...)
	src := testenv.NewTestVM(t, w.lv, testenv.VMOptions{Backing: true, RawData: true, RandomBytes: 32 << 20})
	refs := snapshotRefs(t, src)
	w.setBandwidth(nil, proto.String(eightMiBps))
	name := w.createJob(w.spec(w.sourceVM(w.source, src.Name), nil))
	j := w.waitJob(name, 2*time.Minute, "the copy to begin", func(j *ferryv1.MigrationJob) bool {
		return terminal(j) || j.GetPhase() == converting && disk(j, "vda").GetDoneBytes() > 0
	})
	if terminal(j) {
		t.Fatalf("job ended %s before the guest could write: %s", j.GetState(), j.GetReason())
	}
	if !onOverlays(t, w, src) {
		t.Fatalf("during the copy the source VM runs on %v, want Ferry's overlays", domDisks(t, w, src, false))
	}
	const mib = 1 << 20
	monitorWrite(t, w, src, 0, 0x77, 8*mib, mib)
	monitorWrite(t, w, src, 1, 0x77, 8*mib, mib)
	w.setBandwidth(nil, proto.String(""))
	j = w.waitJob(name, 3*time.Minute, "the job to end", terminal)
	if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
		t.Fatalf("job ended %s: %s", j.GetState(), j.GetReason())
	}
	for i, d := range src.Disks {
		compare(t, refs[i], w.volume(name, d.Target))
		if !holds(d, 0x77, 8*mib, mib) {
			t.Errorf("the guest's write during the copy is not in the source's %s: the commit lost it", d.Path)
		}
	}
	if got := w.f.agents[w.host].lines(`msg="copy method chosen"`); len(got) != 1 || !strings.Contains(got[0], "snapshot because the agent forces it") {
		t.Errorf("the agent's copy method lines: %q, want one naming the forced snapshot method", got)
	}
	reader := "reader=qemu-nbd"
	if len(agentArgs) > 0 {
		reader = `reader="image files (qemu-img map)"`
	}
	if got := w.f.agents[w.host].lines("snapshot taken"); len(got) != 1 || !strings.Contains(got[0], reader) {
		t.Errorf("the agent's snapshot lines: %q, want one with %s", got, reader)
	}
	expectOnOriginals(t, w, src)
}

// TestSnapshotAgentKilled: the agent is killed (SIGKILL) during the copy,
// and in another job during the block commit, then started again. The
// job completes or fails cleanly, and either way the source VM runs on
// its original images with no overlay left, the guest's writes merged
// into them; a job that completes has the disks as they were at the
// snapshot.
func TestSnapshotAgentKilled(t *testing.T) {
	t.Parallel() // see doc.go
	const mib = 1 << 20
	t.Run("during the copy", func(t *testing.T) {
		w := snapshotWorld(t)
		src := testenv.NewTestVM(t, w.lv, testenv.VMOptions{Backing: true, RawData: true, RandomBytes: 40 << 20})
		refs := snapshotRefs(t, src)
		w.setBandwidth(nil, proto.String(eightMiBps))
		name := w.createJob(w.spec(w.sourceVM(w.source, src.Name), nil))
		j := w.waitJob(name, 2*time.Minute, "the copy to begin", func(j *ferryv1.MigrationJob) bool {
			return terminal(j) || j.GetPhase() == converting && disk(j, "vda").GetDoneBytes() > 0
		})
		if terminal(j) {
			t.Fatalf("job ended %s before the agent could be killed: %s", j.GetState(), j.GetReason())
		}
		w.f.agents[w.host].kill()
		if !onOverlays(t, w, src) {
			t.Fatalf("the killed agent's snapshot is gone already: the VM runs on %v", domDisks(t, w, src, false))
		}
		w.setBandwidth(nil, proto.String(""))
		agent := w.f.startAgent(w.host, w.cacheDir)
		j = w.restartedOutcome(t, name, src, refs)
		if got := agent.lines("active block commit begun"); len(got) == 0 {
			t.Error("the restarted agent began no block commit")
		}
	})
	t.Run("during the block commit", func(t *testing.T) {
		// At 1 MiB/s the 6 MiB the guest writes take 6 s to merge back:
		// the agent is killed well inside the commit.
		w := snapshotWorld(t, "--kvm-commit-bandwidth", "1")
		src := testenv.NewTestVM(t, w.lv, testenv.VMOptions{Backing: true, RawData: true, RandomBytes: 16 << 20})
		refs := snapshotRefs(t, src)
		w.setBandwidth(nil, proto.String(eightMiBps))
		name := w.createJob(w.spec(w.sourceVM(w.source, src.Name), nil))
		j := w.waitJob(name, 2*time.Minute, "the copy to begin", func(j *ferryv1.MigrationJob) bool {
			return terminal(j) || j.GetPhase() == converting && disk(j, "vda").GetDoneBytes() > 0
		})
		if terminal(j) {
			t.Fatalf("job ended %s before the guest could write: %s", j.GetState(), j.GetReason())
		}
		monitorWrite(t, w, src, 0, 0x66, 24*mib, 6*mib)
		w.setBandwidth(nil, proto.String(""))
		agent := w.f.agents[w.host]
		testkit.WaitFor(t, 2*time.Minute, "the block commit to begin", func() bool {
			for _, l := range agent.lines("active block commit begun") {
				if strings.Contains(l, " disk=vda ") {
					return true
				}
			}
			return false
		})
		agent.kill()
		out := w.lv.Virsh(t, "blockjob", src.Name, "vda", "--raw")
		if !strings.Contains(out, "type=Active Block Commit") {
			t.Fatalf("no block commit under way when the agent was killed: %q", out)
		}
		w.f.agentArgs = []string{"--kvm-force-snapshot", w.source}
		w.f.startAgent(w.host, w.cacheDir)
		j = w.restartedOutcome(t, name, src, refs)
		if !holds(src.Disks[0], 0x66, 24*mib, 6*mib) {
			t.Error("the guest's write under the interrupted commit is not in the source's original image")
		}
	})
}

// TestSnapshotCancelled: a job copying by the snapshot method and
// cancelled mid-copy leaves the source VM running on its original images,
// the guest's writes since the snapshot merged into them, and no overlay.
func TestSnapshotCancelled(t *testing.T) {
	t.Parallel() // see doc.go
	const mib = 1 << 20
	w := snapshotWorld(t)
	src := testenv.NewTestVM(t, w.lv, testenv.VMOptions{Backing: true, RawData: true, RandomBytes: 64 << 20})
	w.setBandwidth(nil, proto.String(eightMiBps))
	name := w.createJob(w.spec(w.sourceVM(w.source, src.Name), nil))
	j := w.waitJob(name, 2*time.Minute, "the copy to begin", func(j *ferryv1.MigrationJob) bool {
		return terminal(j) || j.GetPhase() == converting && disk(j, "vda").GetDoneBytes() > 0
	})
	if terminal(j) {
		t.Fatalf("job ended %s before it could be cancelled: %s", j.GetState(), j.GetReason())
	}
	monitorWrite(t, w, src, 1, 0x55, 64*mib, mib)
	_, err := w.f.client.Jobs().CancelMigrationJob(ctx(t, 10*time.Second), &ferryv1.CancelMigrationJobRequest{Name: name})
	must(t, err)
	if j := w.job(name); j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_CANCELLED {
		t.Fatalf("cancelled job is %s", j.GetState())
	}
	w.expectVolumesGone(name)
	expectOnOriginals(t, w, src)
	if !holds(src.Disks[1], 0x55, 64*mib, mib) {
		t.Error("the guest's write before the cancel is not in the source's original raw image")
	}
}

// restartedOutcome waits for a job whose agent was killed and restarted to
// end, and checks it ended cleanly: SUCCEEDED with every volume identical
// to the snapshot's copy in refs, or FAILED with no volume left; either
// way the source VM back on its original images.
func (w *world) restartedOutcome(t *testing.T, name string, src *testenv.TestVM, refs []string) *ferryv1.MigrationJob {
	t.Helper()
	j := w.waitJob(name, 3*time.Minute, "the job to end", terminal)
	t.Logf("after the restart the job ended %s: %s", j.GetState(), j.GetReason())
	switch j.GetState() {
	case ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED:
		for i, d := range src.Disks {
			compare(t, refs[i], w.volume(name, d.Target))
		}
	case ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED:
		w.expectVolumesGone(name)
	default:
		t.Fatalf("job ended %s: %s", j.GetState(), j.GetReason())
	}
	expectOnOriginals(t, w, src)
	return j
}
