package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferry-v2v/ferry/agent/internal/source/vmware/vcsimtest"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"
)

// TestWarmVMwareVM migrates a running VM of the vCenter simulator warm:
// changed-block tracking is off and the job's enable_cbt turns it on;
// round 1 copies the flat disk whole, the test then writes into the
// simulator's disk file, round 2 reads only the 64 KiB blocks written
// (the simulator answers QueryChangedDiskAreas from the blocks whose
// content changed), and the cutover powers the VM off, moves the last
// write and defines the target: its volume is identical to the source
// disk as it was when the VM stopped, and no snapshot is left.
func TestWarmVMwareVM(t *testing.T) {
	t.Parallel() // see doc.go
	w := newWorld(t)
	v := w.warmVMwareJob(t, w.createVMwareServer(), nil)
	sim, ref, key, flat, name := v.sim, v.ref, v.key, v.flat, v.name

	j := w.rounds(name, 1)
	if terminal(j) {
		t.Fatalf("job ended %s: %s", j.GetState(), j.GetReason())
	}
	if cbt := v.simVM().Config.ChangeTrackingEnabled; cbt == nil || !*cbt {
		t.Errorf("changed-block tracking not on after the first round with enable_cbt")
	}
	// Round 2: two writes, three 64 KiB blocks (one write straddles two).
	sim.WriteDisk(t, ref, key, bytes.Repeat([]byte{0xa5}, 4096), 1<<20)
	sim.WriteDisk(t, ref, key, bytes.Repeat([]byte{0x5a}, 8192), 5<<20-4096)
	const changed2 = 3 * 64 << 10
	j = w.rounds(name, 2)
	if terminal(j) {
		t.Fatalf("job ended %s: %s", j.GetState(), j.GetReason())
	}
	r2 := j.GetPrecopyRounds()[1]
	if r2.GetChangedBytes() != changed2 || r2.GetReadBytes() > changed2 {
		t.Errorf("round 2 changed %d and read %d bytes; want the %d bytes of the three blocks written", r2.GetChangedBytes(), r2.GetReadBytes(), changed2)
	}
	// The last write, then the cutover.
	sim.WriteDisk(t, ref, key, bytes.Repeat([]byte{0x3c}, 64<<10), 20<<20)
	_, err := w.f.client.Jobs().CutoverMigrationJob(ctx(t, 10*time.Second), &ferryv1.CutoverMigrationJobRequest{Name: name})
	must(t, err)
	j = w.waitJob(name, 3*time.Minute, "the job to end", terminal)
	if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
		t.Fatalf("job ended %s in %s: %s", j.GetState(), j.GetPhase(), j.GetReason())
	}
	rs := j.GetPrecopyRounds()
	final := rs[len(rs)-1]
	if !final.GetFinal() || final.GetReadBytes() > 64<<10*int64(len(rs)-2) {
		t.Errorf("final round %v; want it final, reading no more than the 64 KiB written last", final)
	}
	if j.GetMeasuredDowntime().AsDuration() <= 0 {
		t.Errorf("measured downtime %v", j.GetMeasuredDowntime().AsDuration())
	}
	compare(t, flat, w.volume(name, strconv.Itoa(int(key))))
	if left := v.snapshots(); len(left) > 0 {
		t.Errorf("the source VM keeps snapshots: %v", left)
	}
	if sv := v.simVM(); sv.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOff {
		t.Errorf("the source VM is %s after the cutover, want poweredOff", sv.Runtime.PowerState)
	}
	t.Logf("%d rounds: %v; measured downtime %v", len(rs), rs, j.GetMeasuredDowntime().AsDuration())
}

// warmVMware is a warm job of the vCenter simulator's VM DC0_H0_VM0 with
// one 32 MiB monolithicFlat disk (16 MiB of data), changed-block tracking
// off and the job's enable_cbt on, 10 s between rounds.
type warmVMware struct {
	sim  *vcsimtest.Sim
	ref  types.ManagedObjectReference
	key  int32  // the disk's device key
	flat string // the disk's flat file in the simulator's datastore
	name string // the job
}

// warmVMwareJob starts a simulator and creates the job on server, its
// spec changed first by edit when it is not nil.
func (w *world) warmVMwareJob(t *testing.T, server string, edit func(*ferryv1.MigrationJobSpec)) warmVMware {
	t.Helper()
	const size = 32 << 20
	sim := vcsimtest.Start(t)
	dir := t.TempDir()
	raw := vcsimtest.RawImage(t, dir, "warm", 16<<20, 21)
	must(t, os.Truncate(raw, size))
	vmo := sim.PrepareVM(ctx(t, 30*time.Second), t, "DC0_H0_VM0", vcsimtest.VMSpec{CPUs: 1, MemoryMB: 64,
		Disks: []vcsimtest.Disk{{Files: vcsimtest.ConvertVMDK(t, raw, dir, "warm", "monolithicFlat"), Capacity: size}}})
	ref := vmo.Reference()
	var m mo.VirtualMachine
	must(t, vmo.Properties(ctx(t, 10*time.Second), ref, []string{"config.hardware"}, &m))
	disks := object.VirtualDeviceList(m.Config.Hardware.Device).SelectByType((*types.VirtualDisk)(nil))
	if len(disks) != 1 {
		t.Fatalf("the simulator VM has %d disks, want 1", len(disks))
	}
	source := w.createVMwareSource(sim)
	vm := w.sourceVM(source, "DC0_H0_VM0")
	spec := w.spec(vm, &ferryv1.MigrationOptions{Mode: ferryv1.MigrationMode_MIGRATION_MODE_WARM,
		PrecopyInterval: durationpb.New(10 * time.Second), EnableCbt: true})
	// A warm job's rounds go onto volumes of the migration server's own
	// host.
	spec.Target.Host = "hosts/" + w.vmwareHost()
	if edit != nil {
		edit(spec)
	}
	resp, err := w.f.client.Jobs().CreateMigrationJobs(ctx(t, 10*time.Second), &ferryv1.CreateMigrationJobsRequest{
		Source: source, MigrationServer: server, Jobs: []*ferryv1.MigrationJobSpec{spec}})
	must(t, err)
	return warmVMware{sim: sim, ref: ref, key: disks[0].GetVirtualDevice().Key,
		flat: filepath.Join(sim.DatastoreDir(), "DC0_H0_VM0", "warm-flat.vmdk"), name: resp.GetJobs()[0].GetName()}
}

// simVM is the simulator's VM of v.
func (v warmVMware) simVM() *simulator.VirtualMachine {
	return v.sim.Model.Map().Get(v.ref).(*simulator.VirtualMachine)
}

// snapshots lists the snapshots the simulator's VM keeps.
func (v warmVMware) snapshots() []types.ManagedObjectReference {
	sv := v.simVM()
	if sv.Snapshot == nil {
		return sv.RootSnapshot
	}
	var out []types.ManagedObjectReference
	for _, s := range sv.Snapshot.RootSnapshotList {
		out = append(out, s.Snapshot)
	}
	return append(out, sv.RootSnapshot...)
}

// TestWarmVMwareCancelAndFailure: a warm VMware job cancelled while
// SYNCING, and one whose cutover fails defining the target (a domain of
// that name is in the way; the target is defined before the source
// stops, so the job fails in SYNCING), leave no target volume, no target
// VM of theirs and no snapshot on the source, and the VM running.
func TestWarmVMwareCancelAndFailure(t *testing.T) {
	t.Parallel() // see doc.go
	w := newWorld(t)
	server := w.createVMwareServer()
	powerState := func(v warmVMware) types.VirtualMachinePowerState { return v.simVM().Runtime.PowerState }
	t.Run("cancel while syncing", func(t *testing.T) {
		v := w.warmVMwareJob(t, server, nil)
		j := w.waitJob(v.name, 2*time.Minute, "SYNCING", func(j *ferryv1.MigrationJob) bool {
			return terminal(j) || j.GetPhase() == syncing
		})
		if terminal(j) {
			t.Fatalf("job ended %s before SYNCING: %s", j.GetState(), j.GetReason())
		}
		_, err := w.f.client.Jobs().CancelMigrationJob(ctx(t, 10*time.Second), &ferryv1.CancelMigrationJobRequest{Name: v.name})
		must(t, err)
		w.waitJob(v.name, time.Minute, "the job to end", terminal)
		w.expectVolumesGone(v.name)
		if _, err := w.lv.TryVirsh("domstate", j.GetTarget().GetVmName()); err == nil {
			t.Errorf("target VM %s exists after the cancel", j.GetTarget().GetVmName())
		}
		if left := v.snapshots(); len(left) > 0 {
			t.Errorf("the source VM keeps snapshots after the cancel: %v", left)
		}
		if st := powerState(v); st != types.VirtualMachinePowerStatePoweredOn {
			t.Errorf("the source VM is %s after the cancel, want poweredOn", st)
		}
	})
	t.Run("cutover fails", func(t *testing.T) {
		var squatter *testenv.TestVM
		v := w.warmVMwareJob(t, server, func(spec *ferryv1.MigrationJobSpec) {
			spec.Options.CutoverTime = timestamppb.Now()
			squatter = testenv.NewTestVM(t, w.lv, testenv.VMOptions{Name: spec.GetTarget().GetVmName()})
		})
		j := w.waitJob(v.name, 3*time.Minute, "the job to end", terminal)
		if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED || j.GetPhase() != syncing {
			t.Fatalf("job ended %s in %s: %s", j.GetState(), j.GetPhase(), j.GetReason())
		}
		if rs := j.GetPrecopyRounds(); len(rs) != 1 || rs[0].GetFinal() {
			t.Errorf("rounds = %v; want the first only", rs)
		}
		if !strings.Contains(j.GetReason(), squatter.Name) {
			t.Errorf("reason does not name the domain in the way: %q", j.GetReason())
		}
		w.expectVolumesGone(v.name)
		if st := powerState(v); st != types.VirtualMachinePowerStatePoweredOn {
			t.Errorf("the source VM is %s after the failed cutover, want poweredOn (never stopped)", st)
		}
		if left := v.snapshots(); len(left) > 0 {
			t.Errorf("the source VM keeps snapshots after the failed cutover: %v", left)
		}
		if st := squatter.State(t); st != "running" {
			t.Errorf("the domain that was there first is %s; Ferry must leave it alone", st)
		}
	})
}
