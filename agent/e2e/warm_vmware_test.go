package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferry-v2v/ferry/agent/internal/source/vmware/vcsimtest"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
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
	const size = 32 << 20
	w := newWorld(t)
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
	key := disks[0].GetVirtualDevice().Key
	flat := filepath.Join(sim.DatastoreDir(), "DC0_H0_VM0", "warm-flat.vmdk")

	source := w.createVMwareSource(sim)
	server := w.createVMwareServer()
	vm := w.sourceVM(source, "DC0_H0_VM0")
	spec := w.spec(vm, &ferryv1.MigrationOptions{Mode: ferryv1.MigrationMode_MIGRATION_MODE_WARM,
		PrecopyInterval: durationpb.New(10 * time.Second), EnableCbt: true})
	// A warm job's rounds go onto volumes of the migration server's own
	// host.
	spec.Target.Host = "hosts/" + w.vmwareHost()
	resp, err := w.f.client.Jobs().CreateMigrationJobs(ctx(t, 10*time.Second), &ferryv1.CreateMigrationJobsRequest{
		Source: source, MigrationServer: server, Jobs: []*ferryv1.MigrationJobSpec{spec}})
	must(t, err)
	name := resp.GetJobs()[0].GetName()

	j := w.rounds(name, 1)
	if terminal(j) {
		t.Fatalf("job ended %s: %s", j.GetState(), j.GetReason())
	}
	if cbt := sim.Model.Map().Get(ref).(*simulator.VirtualMachine).Config.ChangeTrackingEnabled; cbt == nil || !*cbt {
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
	_, err = w.f.client.Jobs().CutoverMigrationJob(ctx(t, 10*time.Second), &ferryv1.CutoverMigrationJobRequest{Name: name})
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
	sv := sim.Model.Map().Get(ref).(*simulator.VirtualMachine)
	if sv.Snapshot != nil && len(sv.Snapshot.RootSnapshotList) > 0 || len(sv.RootSnapshot) > 0 {
		t.Errorf("the source VM keeps snapshots: %v", sv.RootSnapshot)
	}
	if sv.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOff {
		t.Errorf("the source VM is %s after the cutover, want poweredOff", sv.Runtime.PowerState)
	}
	t.Logf("%d rounds: %v; measured downtime %v", len(rs), rs, j.GetMeasuredDowntime().AsDuration())
}
