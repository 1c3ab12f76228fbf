package vmware

import (
	"context"
	"errors"
	"math/rand/v2"
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

	"github.com/ferry-v2v/ferry/agent/internal/cache"
	"github.com/ferry-v2v/ferry/agent/internal/pipeline"
	"github.com/ferry-v2v/ferry/agent/internal/runner"
	"github.com/ferry-v2v/ferry/agent/internal/source/vmware/vcsimtest"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/ratelimit"
	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// warmDiskSize is the size of each disk of the warm tests: not a whole
// number of granules, so the last area ends at the disk's end.
const warmDiskSize = 16<<20 + 16<<10

// warm is a running simulator VM with two flat disks holding real data,
// and a job that copies it warm into a cache directory.
type warm struct {
	sim    *vcsimtest.Sim
	vm     *object.VirtualMachine
	ref    types.ManagedObjectReference
	keys   []int32  // disk keys, in device order
	flats  []string // each disk's flat extent file in the datastore
	driver *Driver
	job    *runner.Job
}

func newWarm(t *testing.T, compressed, cbt bool) *warm {
	t.Helper()
	sim := vcsimtest.Start(t)
	ctx := testContext(t, 30*time.Second)
	dir := t.TempDir()
	var spec vcsimtest.VMSpec
	for i := range 2 {
		name := "warm" + strconv.Itoa(i)
		raw := vcsimtest.RawImage(t, dir, name, 16<<20, uint64(10+i))
		if err := os.Truncate(raw, warmDiskSize); err != nil {
			t.Fatal(err)
		}
		spec.Disks = append(spec.Disks, vcsimtest.Disk{Files: vcsimtest.ConvertVMDK(t, raw, dir, name, "monolithicFlat"),
			Capacity: warmDiskSize})
	}
	w := &warm{sim: sim, vm: sim.PrepareVM(ctx, t, "DC0_H0_VM0", spec)}
	w.ref = w.vm.Reference()
	if state, err := w.vm.PowerState(ctx); err != nil || state != types.VirtualMachinePowerStatePoweredOn {
		t.Fatalf("the VM is %s (%v); a warm copy is of a running VM", state, err)
	}
	if cbt {
		task, err := w.vm.Reconfigure(ctx, types.VirtualMachineConfigSpec{ChangeTrackingEnabled: types.NewBool(true)})
		if err == nil {
			err = task.Wait(ctx)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	var vm mo.VirtualMachine
	if err := w.vm.Properties(ctx, w.ref, []string{"config.hardware"}, &vm); err != nil {
		t.Fatal(err)
	}
	var targets []*ferryv1.TargetDisk
	for i, d := range object.VirtualDeviceList(vm.Config.Hardware.Device).SelectByType((*types.VirtualDisk)(nil)) {
		w.keys = append(w.keys, d.GetVirtualDevice().Key)
		w.flats = append(w.flats, filepath.Join(sim.DatastoreDir(), "DC0_H0_VM0", "warm"+strconv.Itoa(i)+"-flat.vmdk"))
		targets = append(targets, &ferryv1.TargetDisk{SourceDisk: strconv.Itoa(int(d.GetVirtualDevice().Key)), SizeBytes: warmDiskSize})
	}
	compression := ferryv1.Compression_COMPRESSION_NONE
	if compressed {
		compression = ferryv1.Compression_COMPRESSION_ZSTD
	}
	src, secrets := simSource(t, sim)
	w.driver = NewDriver(testkit.Logger(t), Options{RetryBudget: 10 * time.Second, RetryBackoffMin: 10 * time.Millisecond})
	w.job = &runner.Job{CacheDir: t.TempDir(), Log: testkit.Logger(t), Assignment: &agentv1.Assignment{
		Job: &ferryv1.MigrationJob{Name: "migrationJobs/warm1", SourceVm: w.ref.Value,
			Target: &ferryv1.TargetVm{Disks: targets}, Options: &ferryv1.MigrationOptions{Compression: compression}},
		Epoch: 1, Source: src, Secrets: secrets,
		MigrationServer: &ferryv1.MigrationServer{Name: "migrationServers/ms"}}}
	return w
}

func (w *warm) start(t *testing.T, ctx context.Context, opts PrecopyOptions) *Precopy {
	t.Helper()
	p, err := w.driver.StartPrecopy(ctx, w.job, opts)
	if err != nil {
		t.Fatalf("StartPrecopy: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// checkCache compares every disk's cache image with the disk's content
// in the datastore, byte for byte.
func (w *warm) checkCache(t *testing.T, round int) {
	t.Helper()
	for i, key := range w.keys {
		name := strconv.Itoa(int(key))
		img, format := filepath.Join(w.job.CacheDir, name+".raw"), "raw"
		if _, err := os.Stat(img); err != nil {
			img, format = filepath.Join(w.job.CacheDir, name+".qcow2"), "qcow2"
		}
		if out, same := vcsimtest.Compare(t, img, format, w.flats[i], "raw"); !same {
			t.Errorf("round %d: the cache image of disk %s differs from the source disk: %s", round, name, out)
		}
	}
}

// checkSums verifies each cache image against the checksums its first
// round recorded, as UPLOADING verifies the target against them.
func (w *warm) checkSums(t *testing.T, ctx context.Context) {
	t.Helper()
	for _, key := range w.keys {
		name := strconv.Itoa(int(key))
		cp, err := pipeline.OpenCheckpoint(cache.CheckpointPath(w.job.CacheDir, name))
		if err != nil {
			t.Fatalf("disk %s: %v", name, err)
		}
		exp, err := cache.OpenExport(ctx, w.job.CacheDir, name, w.job.Log)
		if err != nil {
			t.Fatal(err)
		}
		st, err := pipeline.Verify(ctx, pipeline.NBDSource{Client: exp.Client()}, cp, 4)
		exp.Close()
		if err != nil {
			t.Errorf("disk %s: the cache image against its checksums: %v", name, err)
		}
		t.Logf("disk %s: checksums verified: %+v", name, st)
	}
}

// checkNoSnapshot fails when the VM has a snapshot.
func (w *warm) checkNoSnapshot(t *testing.T, when string) {
	t.Helper()
	vm := w.sim.Model.Map().Get(w.ref).(*simulator.VirtualMachine)
	if vm.Snapshot != nil && len(vm.Snapshot.RootSnapshotList) > 0 {
		t.Errorf("%s: the VM has snapshots: %+v", when, vm.Snapshot.RootSnapshotList)
	}
	if len(vm.RootSnapshot) > 0 {
		t.Errorf("%s: the VM has root snapshots %v", when, vm.RootSnapshot)
	}
}

// checkExtents checks a round's extents for the upload: nil in a first
// round; else the written areas, each Zero exactly when the source reads
// as zeroes there.
func (w *warm) checkExtents(t *testing.T, res *RoundResult) {
	t.Helper()
	for i, dr := range res.Disks {
		if res.Full {
			if dr.Extents != nil {
				t.Errorf("round %d disk %s: a first round's extents %v, want nil", res.Round, dr.Disk, dr.Extents)
			}
			continue
		}
		if dr.Extents == nil || len(dr.Extents) != len(dr.Written) {
			t.Errorf("round %d disk %s: extents %v for written areas %v", res.Round, dr.Disk, dr.Extents, dr.Written)
			continue
		}
		f, err := os.Open(w.flats[i])
		if err != nil {
			t.Fatal(err)
		}
		for j, e := range dr.Extents {
			buf := make([]byte, e.Length)
			if _, err := f.ReadAt(buf, e.Offset); err != nil {
				t.Fatal(err)
			}
			if e.Offset != dr.Written[j].Offset || e.Length != dr.Written[j].Length || e.Zero != isZero(buf) {
				t.Errorf("round %d disk %s: extent %+v; written %+v, the source reads as zeroes there: %v",
					res.Round, dr.Disk, e, dr.Written[j], isZero(buf))
			}
		}
		f.Close()
	}
}

// write is a known write into one disk between rounds.
type write struct {
	disk int
	off  int64
	n    int
	zero bool // zeroes rather than random bytes
}

func (w *warm) apply(t *testing.T, rng *rand.Rand, ws []write) {
	t.Helper()
	for _, x := range ws {
		p := make([]byte, x.n)
		if !x.zero {
			for i := range p {
				p[i] = byte(rng.Uint32()) | 1 // never all zeroes, never what was there by chance
			}
		}
		w.sim.WriteDisk(t, w.ref, w.keys[x.disk], p, x.off)
	}
}

// wantChanged is the areas tracking must report for ws on one disk:
// the CBTBlock blocks the writes touch, merged.
func wantChanged(ws []write, disk int, size int64) []Area {
	var blocks []Area
	for _, x := range ws {
		if x.disk != disk {
			continue
		}
		for b := x.off / vcsimtest.CBTBlock; b*vcsimtest.CBTBlock < x.off+int64(x.n); b++ {
			blocks = append(blocks, Area{Offset: b * vcsimtest.CBTBlock, Length: min(vcsimtest.CBTBlock, size-b*vcsimtest.CBTBlock)})
		}
	}
	// Sort and merge.
	for i := range blocks {
		for j := i + 1; j < len(blocks); j++ {
			if blocks[j].Offset < blocks[i].Offset {
				blocks[i], blocks[j] = blocks[j], blocks[i]
			}
		}
	}
	var out []Area
	for _, b := range blocks {
		if n := len(out); n > 0 && b.Offset <= out[n-1].End() {
			out[n-1].Length = max(out[n-1].End(), b.End()) - out[n-1].Offset
			continue
		}
		out = append(out, b)
	}
	return out
}

func sameAreas(a, b []Area) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestPrecopyRoundsReadOnlyChangedAreas runs three rounds of a warm copy
// of a running VM with changed-block tracking, with known writes into its
// disks' files between rounds (unaligned, spanning blocks, zeroing data,
// at the disk's end, on one disk only): after each round the cache images
// are the source disks byte for byte; the second and third rounds are
// told exactly the blocks written and read only those (at most one
// granule more per area), and the datastore served exactly what the
// driver counts; no snapshot is left after any round.
func TestPrecopyRoundsReadOnlyChangedAreas(t *testing.T) {
	for _, compressed := range []bool{false, true} {
		t.Run(map[bool]string{false: "raw", true: "qcow2"}[compressed], func(t *testing.T) {
			if compressed {
				// Areas read as many pieces at once.
				defer func(n int64) { areaPiece = n }(areaPiece)
				areaPiece = 4 * cache.Granule
			}
			w := newWarm(t, compressed, true)
			ctx := testContext(t, 2*time.Minute)
			p := w.start(t, ctx, PrecopyOptions{})
			if p.CBTEnabled() {
				t.Error("CBT was already on, yet StartPrecopy says it turned it on")
			}
			rng := rand.New(rand.NewPCG(7, 8))
			rounds := [][]write{
				nil,
				{{disk: 0, off: 1<<20 + 100, n: 4096}, {disk: 0, off: 5<<20 + 7, n: 200 << 10},
					{disk: 1, off: 3 << 20, n: 64 << 10}, {disk: 1, off: 9<<20 - 10, n: 20}},
				// Zeroes over what the round before wrote: a change to zeroes.
				{{disk: 1, off: warmDiskSize - 1000, n: 1000}, {disk: 1, off: 0, n: 1}, {disk: 0, off: 1<<20 + 100, n: 4096},
					{disk: 0, off: 5<<20 + 7, n: 200 << 10, zero: true}, {disk: 1, off: 3 << 20, n: 64 << 10, zero: true}},
			}
			for i, ws := range rounds {
				w.apply(t, rng, ws)
				servedBefore := w.sim.FolderBytes()
				res, err := p.Round(ctx)
				if err != nil {
					t.Fatalf("round %d: %v", i+1, err)
				}
				served := w.sim.FolderBytes() - servedBefore
				t.Logf("round %d: full %v, changed %d bytes, read %d bytes, written %d bytes, served %d bytes, %s",
					res.Round, res.Full, res.ChangedBytes, res.ReadBytes, res.WrittenBytes, served, res.Duration)
				if res.Round != i+1 || res.Full != (i == 0) || p.Rounds() != i+1 {
					t.Errorf("round %d: result round %d full %v, Rounds %d", i+1, res.Round, res.Full, p.Rounds())
				}
				w.checkCache(t, i+1)
				w.checkNoSnapshot(t, "after round "+strconv.Itoa(i+1))
				var descriptors int64
				for _, f := range w.flats {
					st, err := os.Stat(strings.TrimSuffix(f, "-flat.vmdk") + ".vmdk")
					if err != nil {
						t.Fatal(err)
					}
					descriptors += st.Size()
				}
				if served != res.ReadBytes+descriptors {
					t.Errorf("round %d: the datastore served %d bytes; the driver counts %d read and the descriptors are %d",
						i+1, served, res.ReadBytes, descriptors)
				}
				w.checkExtents(t, res)
				if i == 0 {
					w.checkSums(t, ctx)
					continue
				}
				for d, dr := range res.Disks {
					want := wantChanged(ws, d, warmDiskSize)
					if !sameAreas(dr.Changed, want) {
						t.Errorf("round %d disk %s: tracking reported %v, the writes touched %v", i+1, dr.Disk, dr.Changed, want)
					}
					if limit := dr.ChangedBytes + int64(len(dr.Changed))*cache.Granule; dr.ReadBytes > limit || dr.ReadBytes < dr.ChangedBytes {
						t.Errorf("round %d disk %s: read %d bytes for %d changed in %d areas (at most %d)",
							i+1, dr.Disk, dr.ReadBytes, dr.ChangedBytes, len(dr.Changed), limit)
					}
					if dr.PrevChangeID == FirstChangeID || dr.PrevChangeID == dr.ChangeID {
						t.Errorf("round %d disk %s: asked against %q, now %q", i+1, dr.Disk, dr.PrevChangeID, dr.ChangeID)
					}
				}
				if res.ReadBytes >= 2*int64(len(w.keys))*warmDiskSize/8 {
					t.Errorf("round %d read %d bytes: far more than the writes", i+1, res.ReadBytes)
				}
			}

			// A round with nothing changed reads nothing, not even a
			// descriptor, and gives an upload nothing to do.
			servedBefore, getsBefore := w.sim.FolderBytes(), w.sim.FolderGets()
			res, err := p.Round(ctx)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("round %d with nothing changed: %s, %d datastore GETs", res.Round, res.Duration, w.sim.FolderGets()-getsBefore)
			if res.ChangedBytes != 0 || res.ReadBytes != 0 || w.sim.FolderBytes() != servedBefore || w.sim.FolderGets() != getsBefore {
				t.Errorf("round %d with nothing changed: changed %d, read %d, served %d bytes in %d GETs", res.Round,
					res.ChangedBytes, res.ReadBytes, w.sim.FolderBytes()-servedBefore, w.sim.FolderGets()-getsBefore)
			}
			for _, dr := range res.Disks {
				if dr.Extents == nil || len(dr.Extents) != 0 {
					t.Errorf("disk %s: extents %v, want none (and not nil)", dr.Disk, dr.Extents)
				}
			}
			w.checkCache(t, res.Round)
			w.checkNoSnapshot(t, "after the round with nothing changed")
		})
	}
}

// cbtOn reads the simulator VM's changeTrackingEnabled.
func (w *warm) cbtOn() bool {
	vm := w.sim.Model.Map().Get(w.ref).(*simulator.VirtualMachine)
	return vm.Config.ChangeTrackingEnabled != nil && *vm.Config.ChangeTrackingEnabled
}

// TestPrecopyCBTConsent refuses a VM without changed-block tracking
// unless the job consents, naming the option to set, and leaves the VM as
// it was; with consent it turns tracking on and the rounds copy the disks.
func TestPrecopyCBTConsent(t *testing.T) {
	w := newWarm(t, false, false)
	ctx := testContext(t, time.Minute)
	_, err := w.driver.StartPrecopy(ctx, w.job, PrecopyOptions{})
	t.Logf("without consent: %v", err)
	if !errors.Is(err, ErrCBTOff) || !strings.Contains(err.Error(), "set options.enable_cbt on the job") ||
		!strings.Contains(err.Error(), "DC0_H0_VM0") {
		t.Fatalf("StartPrecopy without consent: %v; want ErrCBTOff naming the VM and enable_cbt", err)
	}
	if w.cbtOn() {
		t.Error("tracking was turned on without consent")
	}
	w.checkNoSnapshot(t, "after the refusal")

	p := w.start(t, ctx, PrecopyOptions{EnableCBT: true})
	if !p.CBTEnabled() || !w.cbtOn() {
		t.Fatalf("with consent: StartPrecopy says enabled %v, the VM's changeTrackingEnabled %v", p.CBTEnabled(), w.cbtOn())
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for i, ws := range [][]write{nil, {{disk: 1, off: 2<<20 + 5, n: 70 << 10}}} {
		w.apply(t, rng, ws)
		res, err := p.Round(ctx)
		if err != nil {
			t.Fatalf("round %d: %v", i+1, err)
		}
		w.checkCache(t, i+1)
		w.checkNoSnapshot(t, "after round "+strconv.Itoa(i+1))
		if i == 1 && (res.ChangedBytes != 2*vcsimtest.CBTBlock || !sameAreas(res.Disks[1].Changed, wantChanged(ws, 1, warmDiskSize))) {
			t.Errorf("round 2 changed %d bytes (%v), want the 2 blocks written", res.ChangedBytes, res.Disks[1].Changed)
		}
	}
	// A second start finds tracking on and says it did not turn it on.
	p2 := w.start(t, ctx, PrecopyOptions{EnableCBT: true, Token: p.Token()})
	if p2.CBTEnabled() {
		t.Error("a second start says it turned tracking on")
	}

	// Tracking turned off between rounds: the change ids no longer hold,
	// even with consent to turn it on again.
	task, err := w.vm.Reconfigure(ctx, types.VirtualMachineConfigSpec{ChangeTrackingEnabled: types.NewBool(false)})
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		t.Fatal(err)
	}
	_, err = w.driver.StartPrecopy(ctx, w.job, PrecopyOptions{EnableCBT: true, Token: p.Token()})
	t.Logf("after tracking was turned off: %v", err)
	if !errors.Is(err, ErrCBT) || !strings.Contains(err.Error(), "restart the job for a new full copy") {
		t.Errorf("a round after tracking was turned off: %v", err)
	}
}

// TestPrecopyFailureCancelAndResume checks the round's snapshot is removed
// when the round fails (tracking refuses to answer), when it is cancelled
// in the middle of its reads, and when a read's connection breaks and is
// read again; a failed or cancelled round leaves the last completed round
// as the restart point, and a new run (an agent restarted) resumes after
// it, the cache matching the source byte for byte each time.
func TestPrecopyFailureCancelAndResume(t *testing.T) {
	w := newWarm(t, true, true)
	ctx := testContext(t, 2*time.Minute)
	p := w.start(t, ctx, PrecopyOptions{})
	first, err := p.Round(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	w.apply(t, rng, []write{{disk: 0, off: 7 << 20, n: 300 << 10}, {disk: 1, off: 1 << 20, n: 10}})

	// A failure after the snapshot was taken.
	w.sim.FailCBTQueries(1)
	if _, err := p.Round(ctx); err == nil || !strings.Contains(err.Error(), "injected QueryChangedDiskAreas failure") {
		t.Fatalf("round with tracking failing: %v", err)
	}
	w.checkNoSnapshot(t, "after the failed round")
	if p.Rounds() != 1 {
		t.Errorf("after a failed round, the last completed is %d, want 1", p.Rounds())
	}

	// A cancel while the round reads.
	held := w.sim.HoldFolder()
	cctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { _, err := p.Round(cctx); errc <- err }()
	select {
	case <-held:
	case <-ctx.Done():
		t.Fatal("the round never read")
	}
	cancel()
	err = <-errc
	w.sim.ReleaseFolder()
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled round: %v", err)
	}
	w.checkNoSnapshot(t, "after the cancelled round")
	if p.Rounds() != 1 {
		t.Errorf("after a cancelled round, the last completed is %d, want 1", p.Rounds())
	}

	// A read cut short is read again from the granule it reached.
	w.sim.CutFolderAfter(200 << 10)
	res, err := p.Round(ctx)
	if err != nil {
		t.Fatalf("round with a read cut short: %v", err)
	}
	var retries int64
	for _, dr := range res.Disks {
		retries += dr.Retries
		if dr.PrevChangeID != first.Disks[0].ChangeID && dr.PrevChangeID != first.Disks[1].ChangeID {
			t.Errorf("disk %s: asked against %q, not round 1's change id", dr.Disk, dr.PrevChangeID)
		}
	}
	t.Logf("round %d after a cut: changed %d, read %d bytes, %d retries", res.Round, res.ChangedBytes, res.ReadBytes, retries)
	if res.Round != 2 || res.Full || retries != 1 {
		t.Errorf("round %d full %v retries %d; want round 2, not full, one retry", res.Round, res.Full, retries)
	}
	if res.ReadBytes <= res.ChangedBytes || res.ReadBytes > res.ChangedBytes+200<<10 {
		t.Errorf("read %d bytes for %d changed and one read cut at 200 KiB", res.ReadBytes, res.ChangedBytes)
	}
	w.checkCache(t, 2)
	w.checkNoSnapshot(t, "after round 2")
	if res.Token != p.Token() {
		t.Errorf("round 2's token %q, the precopy's %q", res.Token, p.Token())
	}
	p.Close()

	// A restarted agent resumes after round 2, from its token.
	w.apply(t, rng, []write{{disk: 1, off: 15 << 20, n: 1 << 20}})
	p2 := w.start(t, ctx, PrecopyOptions{Token: res.Token})
	if p2.Rounds() != 2 {
		t.Fatalf("a new run resumes after round %d, want 2", p2.Rounds())
	}
	res, err = p2.Round(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Round != 3 || res.Full || res.ChangedBytes != 1<<20 {
		t.Errorf("resumed round %d full %v changed %d; want round 3, only the 1 MiB written", res.Round, res.Full, res.ChangedBytes)
	}
	w.checkCache(t, 3)
	w.checkNoSnapshot(t, "after round 3")

	// A token without its cache images (another cache directory) is refused.
	w.job.CacheDir = t.TempDir()
	_, err = w.driver.WarmRound(ctx, w.job, p2.Token(), false)
	t.Logf("a round without the cache images: %v", err)
	if !errors.Is(err, ErrCBT) || !strings.Contains(err.Error(), "restart the job for a new full copy") {
		t.Errorf("a round from a token without its cache images: %v", err)
	}
	w.checkNoSnapshot(t, "after the refused round")
}

// powerState is the simulator VM's power state.
func (w *warm) powerState() types.VirtualMachinePowerState {
	return w.sim.Model.Map().Get(w.ref).(*simulator.VirtualMachine).Runtime.PowerState
}

// TestWarmRoundStopSourceEndWarm drives the driver as the runner's warm
// itinerary does: a first round from no token, a round from its token,
// StopSource (guest shutdown), the final round seeing the writes made
// before the stop, then EndWarm: after a failed cutover it powers the
// source on again, after a successful one it leaves it off; called twice
// it does nothing more; no snapshot is left.
func TestWarmRoundStopSourceEndWarm(t *testing.T) {
	w := newWarm(t, false, true)
	ctx := testContext(t, 2*time.Minute)
	rng := rand.New(rand.NewPCG(5, 6))
	token := ""
	for i, ws := range [][]write{nil, {{disk: 0, off: 3 << 20, n: 1 << 20}}} {
		w.apply(t, rng, ws)
		var lim *ratelimit.Limiter
		if i == 1 { // the downstream limit holds for later rounds too
			lim = ratelimit.New(16 << 20) // 2 MiB/s
			w.job.Downstream = lim
		}
		res, err := w.driver.WarmRound(ctx, w.job, token, false)
		w.job.Downstream = nil
		if err != nil {
			t.Fatalf("round %d: %v", i+1, err)
		}
		if lim != nil {
			floor := time.Duration(float64(res.ReadBytes-int64(lim.Burst())) / float64(2<<20) * float64(time.Second))
			t.Logf("round %d under 2 MiB/s: read %d bytes in %s (at least %s), the limiter granted %d",
				res.Round, res.ReadBytes, res.Duration, floor, lim.Granted())
			if lim.Granted() != res.ReadBytes || res.Duration < floor || res.ReadBytes < 1<<20 {
				t.Errorf("round %d: the limiter granted %d bytes of %d read, in %s (at least %s)",
					res.Round, lim.Granted(), res.ReadBytes, res.Duration, floor)
			}
		}
		if res.Round != i+1 || res.Full != (token == "") || res.Token == "" || res.Token == token {
			t.Errorf("round %d: number %d full %v token %q after %q", i+1, res.Round, res.Full, res.Token, token)
		}
		w.checkCache(t, i+1)
		w.checkExtents(t, res)
		token = res.Token
	}
	for _, succeeded := range []bool{false, true} {
		w.apply(t, rng, []write{{disk: 1, off: 8 << 20, n: 64 << 10}})
		if err := w.driver.StopSource(ctx, w.job); err != nil {
			t.Fatalf("StopSource: %v", err)
		}
		if st := w.powerState(); st != types.VirtualMachinePowerStatePoweredOff {
			t.Fatalf("after StopSource the VM is %s", st)
		}
		final, err := w.driver.WarmRound(ctx, w.job, token, false)
		if err != nil {
			t.Fatalf("final round: %v", err)
		}
		if final.ChangedBytes != 64<<10 {
			t.Errorf("final round changed %d bytes, want the 64 KiB written before the stop", final.ChangedBytes)
		}
		w.checkCache(t, final.Round)
		token = final.Token
		for range 2 {
			if err := w.driver.EndWarm(ctx, w.job, succeeded); err != nil {
				t.Fatalf("EndWarm(%v): %v", succeeded, err)
			}
		}
		want := types.VirtualMachinePowerStatePoweredOn
		if succeeded {
			want = types.VirtualMachinePowerStatePoweredOff
		}
		if st := w.powerState(); st != want {
			t.Errorf("after EndWarm(succeeded %v) the VM is %s, want %s", succeeded, st, want)
		}
		w.checkNoSnapshot(t, "after EndWarm")
	}
}
