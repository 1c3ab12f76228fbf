package vmware

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
	"github.com/ferry-v2v/ferry/agent/internal/pipeline"
	"github.com/ferry-v2v/ferry/agent/internal/runner"
	"github.com/ferry-v2v/ferry/agent/internal/source/vmware/vcsimtest"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// diskSize is the size of each test disk.
const diskSize = 8 << 20

// migration is a simulator VM with three real VMDKs (streamOptimized,
// monolithicSparse, monolithicFlat) made from raw images, and a runner
// that runs jobs with the VMware driver and a target that does nothing.
type migration struct {
	sim    *vcsimtest.Sim
	vm     *object.VirtualMachine
	raws   map[string]string // raw image by disk name
	disks  []string          // disk names, in device order
	cache  string
	driver *Driver
	target *holdTarget
	runner *runner.Runner
	// shutdown is the assignments' guest shutdown timeout (none when 0).
	shutdown time.Duration
	rep      *reporter
	epoch    int64
	// proxy, when set, stands between the driver and the simulator.
	proxy *testenv.Proxy
	// downstream limits the copy, in bits per second (none when 0).
	downstream int64
	// password, when set, replaces the simulator's in the secrets.
	password string
}

func newMigration(t *testing.T, opts Options) *migration {
	sim := vcsimtest.Start(t)
	ctx := testContext(t, 30*time.Second)
	dir := t.TempDir()
	m := &migration{sim: sim, raws: map[string]string{}, cache: t.TempDir()}
	var spec vcsimtest.VMSpec
	var raws []string
	for i, sub := range []string{"streamOptimized", "monolithicSparse", "monolithicFlat"} {
		raw := vcsimtest.RawImage(t, dir, sub, diskSize, uint64(i+1))
		raws = append(raws, raw)
		spec.Disks = append(spec.Disks, vcsimtest.Disk{Files: vcsimtest.ConvertVMDK(t, raw, dir, sub, sub), Capacity: diskSize})
	}
	m.vm = sim.PrepareVM(ctx, t, "DC0_H0_VM0", spec)
	var vm mo.VirtualMachine
	if err := m.vm.Properties(ctx, m.vm.Reference(), []string{"config.hardware"}, &vm); err != nil {
		t.Fatal(err)
	}
	for _, d := range object.VirtualDeviceList(vm.Config.Hardware.Device).SelectByType((*types.VirtualDisk)(nil)) {
		name := strconv.Itoa(int(d.GetVirtualDevice().Key))
		m.disks = append(m.disks, name)
		m.raws[name] = raws[len(m.disks)-1]
	}
	if opts.ShutdownTimeout == 0 {
		opts.ShutdownTimeout = 5 * time.Second
	}
	if opts.LeaseUpdateInterval == 0 {
		opts.LeaseUpdateInterval = 50 * time.Millisecond
	}
	m.driver = NewDriver(testkit.Logger(t), opts)
	m.rep = &reporter{results: make(chan *agentv1.JobResult, 4)}
	m.target = &holdTarget{entered: make(chan string, 4)}
	m.runner = runner.New(runner.Config{DataDir: t.TempDir()}, runner.Deps{
		Drivers:  runner.Drivers{Sources: map[ferryv1.Platform]runner.Source{ferryv1.Platform_PLATFORM_VMWARE: m.driver}, Target: m.target},
		Reporter: m.rep, Logger: testkit.Logger(t)})
	rctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = m.runner.Run(rctx) }()
	t.Cleanup(func() { stop(); <-done })
	return m
}

// start assigns the job (again, with a new epoch).
func (m *migration) start(t *testing.T) {
	src, secrets := simSource(t, m.sim)
	if m.proxy != nil {
		src.Vcenter.Address, src.Vcenter.Port = m.proxy.Host(), int32(m.proxy.Port())
	}
	if m.password != "" {
		secrets[src.GetVcenter().GetCredential()] = m.password
	}
	var disks []*ferryv1.TargetDisk
	for _, d := range m.disks {
		disks = append(disks, &ferryv1.TargetDisk{SourceDisk: d, SizeBytes: diskSize})
	}
	m.epoch++
	a := &agentv1.Assignment{
		// The simulator's disks hold no OS for a guest conversion to adapt.
		Job: &ferryv1.MigrationJob{Name: "migrationJobs/j1", SourceVm: m.vm.Reference().Value,
			Target:  &ferryv1.TargetVm{Disks: disks},
			Options: &ferryv1.MigrationOptions{GuestConversion: ferryv1.GuestConversion_GUEST_CONVERSION_OFF}},
		Epoch: m.epoch, Source: src, Secrets: secrets,
		MigrationServer: &ferryv1.MigrationServer{Name: "migrationServers/ms", CachePath: m.cache,
			DownstreamBitsPerSecond: m.downstream},
	}
	if m.shutdown > 0 {
		a.GuestShutdownTimeout = durationpb.New(m.shutdown)
	}
	if err := m.runner.Start(a); err != nil {
		t.Fatal(err)
	}
}

func (m *migration) result(t *testing.T) *agentv1.JobResult {
	select {
	case r := <-m.rep.results:
		t.Logf("job result: %s %q", r.GetOutcome(), r.GetReason())
		return r
	case <-time.After(50 * time.Second):
		t.Fatal("no job result in 50 s")
		return nil
	}
}

// run starts the job and waits for its result.
func (m *migration) run(t *testing.T) *agentv1.JobResult {
	m.start(t)
	return m.result(t)
}

// checkDisks compares each cache image with the raw image it came from.
func (m *migration) checkDisks(t *testing.T) {
	for _, d := range m.disks {
		img := filepath.Join(m.cache, "j1", d+".qcow2")
		if out, same := vcsimtest.Compare(t, m.raws[d], "raw", img, "qcow2"); !same {
			t.Errorf("disk %s: the cache image differs from the raw image: %s", d, out)
		}
	}
}

func (m *migration) powerState(t *testing.T) types.VirtualMachinePowerState {
	s, err := m.vm.PowerState(testContext(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// snapshots counts the VM's snapshots.
func (m *migration) snapshots(t *testing.T) int {
	var vm mo.VirtualMachine
	if err := m.vm.Properties(testContext(t, 10*time.Second), m.vm.Reference(), []string{"snapshot"}, &vm); err != nil {
		t.Fatal(err)
	}
	n := 0
	var walk func([]types.VirtualMachineSnapshotTree)
	walk = func(ts []types.VirtualMachineSnapshotTree) {
		for _, s := range ts {
			n++
			walk(s.ChildSnapshotList)
		}
	}
	if vm.Snapshot != nil {
		walk(vm.Snapshot.RootSnapshotList)
	}
	return n
}

// checkLeaseReleased checks the newest lease ended in state and that the
// simulator no longer serves its URLs.
func (m *migration) checkLeaseReleased(t *testing.T, state, fault string) {
	l, ok := m.sim.Leases.Last()
	if !ok {
		t.Fatal("no export lease was opened")
	}
	if l.State != state || !strings.Contains(l.Fault, fault) {
		t.Errorf("lease %s: %s %q, want %s with %q", l.ID, l.State, l.Fault, state, fault)
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	for _, u := range l.URLs {
		res, err := client.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s after the lease ended: %s, want 404", u, res.Status)
		}
	}
	if n := m.snapshots(t); n != 0 {
		t.Errorf("%d snapshots left on the VM", n)
	}
}

func TestConvertCopiesEveryDisk(t *testing.T) {
	m := newMigration(t, Options{})
	// A snapshot an agent that crashed mid-export left behind.
	task, err := m.vm.CreateSnapshot(testContext(t, 10*time.Second), SnapshotPrefix+"crashed", "", false, false)
	if err == nil {
		err = task.Wait(testContext(t, 10*time.Second))
	}
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	r := m.run(t)
	if r.GetOutcome() != agentv1.JobOutcome_JOB_OUTCOME_SUCCEEDED {
		t.Fatalf("job %s: %s", r.GetOutcome(), r.GetReason())
	}
	t.Logf("converted 3 disks of %d MiB in %v", diskSize>>20, time.Since(start))
	m.checkDisks(t)
	m.checkVerified(t, r)
	m.checkLeaseReleased(t, vcsimtest.LeaseCompleted, "")
	if l, _ := m.sim.Leases.Last(); len(l.Progress) == 0 || l.Progress[len(l.Progress)-1] != 100 {
		t.Errorf("lease progress updates %v, want some ending at 100", l.Progress)
	}
	if s := m.powerState(t); s != types.VirtualMachinePowerStatePoweredOff {
		t.Errorf("source VM %s after the job, want powered off", s)
	}
	vm, _, err := cache.LoadSourceVM(filepath.Join(m.cache, "j1"))
	if err != nil {
		t.Fatalf("source VM: %v", err)
	}
	if vm.GetId() != m.vm.Reference().Value || len(vm.GetDisks()) != 3 || len(vm.GetNics()) != 1 {
		t.Errorf("source VM %v", vm)
	}
}

// reporter keeps a runner's results.
type reporter struct {
	mu      sync.Mutex
	results chan *agentv1.JobResult
}

func (r *reporter) Progress(*agentv1.JobProgress) {}

func (r *reporter) Result(res *agentv1.JobResult) { r.results <- res }

// holdTarget leaves the cache as CONVERTING made it; with hold set to
// "upload" or "configure" it waits in that phase until the job ends, and
// it counts rollbacks.
type holdTarget struct {
	hold string
	// corrupt, when set, is called first in Upload.
	corrupt   func(ctx context.Context, job *runner.Job) error
	entered   chan string
	rollbacks atomic.Int32
}

func (h *holdTarget) wait(ctx context.Context, phase string) error {
	if h.hold != phase {
		return nil
	}
	h.entered <- phase
	<-ctx.Done()
	return ctx.Err()
}

func (h *holdTarget) Upload(ctx context.Context, job *runner.Job) error {
	if h.corrupt != nil {
		if err := h.corrupt(ctx, job); err != nil {
			return err
		}
	}
	return h.wait(ctx, "upload")
}

// Verify checks each cache image against the checksums the copy recorded,
// as the target driver checks the volumes uploaded from them: every disk
// must have them.
func (h *holdTarget) Verify(ctx context.Context, job *runner.Job) error {
	for _, d := range job.Assignment.GetJob().GetTarget().GetDisks() {
		name := d.GetSourceDisk()
		cp, err := pipeline.OpenCheckpoint(cache.CheckpointPath(job.CacheDir, name))
		if err != nil {
			return fmt.Errorf("disk %s: %w", name, err)
		}
		if !cp.Verifiable() {
			return fmt.Errorf("disk %s: the copy recorded no checksum for some chunks", name)
		}
		exp, err := cache.OpenExport(ctx, job.CacheDir, name, job.Log)
		if err != nil {
			return err
		}
		_, err = pipeline.Verify(ctx, pipeline.NBDSource{Client: exp.Client()}, cp, 4)
		if cerr := exp.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("disk %s: %w", name, err)
		}
		job.Progress.SetVerified(name)
	}
	return nil
}

// checkVerified checks the result reports every disk verified.
func (m *migration) checkVerified(t *testing.T, r *agentv1.JobResult) {
	t.Helper()
	verified := map[string]bool{}
	for _, d := range r.GetDisks() {
		verified[d.GetSourceDisk()] = d.GetVerified()
	}
	for _, d := range m.disks {
		if !verified[d] {
			t.Errorf("disk %s not verified; the result reports %v", d, r.GetDisks())
		}
	}
}

func (h *holdTarget) Configure(ctx context.Context, _ *runner.Job) ([]string, error) {
	return nil, h.wait(ctx, "configure")
}

func (h *holdTarget) Rollback(context.Context, *runner.Job) error {
	h.rollbacks.Add(1)
	return nil
}

func TestConvertPowersOffAGuestThatIgnoresShutdown(t *testing.T) {
	const timeout = time.Second
	// The agent's own default is a minute; the assignment's second wins.
	m := newMigration(t, Options{ShutdownTimeout: time.Minute})
	m.shutdown = timeout
	m.sim.IgnoreShutdown(m.vm.Reference())
	start := time.Now()
	if r := m.run(t); r.GetOutcome() != agentv1.JobOutcome_JOB_OUTCOME_SUCCEEDED {
		t.Fatalf("job %s: %s", r.GetOutcome(), r.GetReason())
	}
	if d := time.Since(start); d < timeout || d > 40*time.Second {
		t.Errorf("the job took %v; want at least the assignment's shutdown timeout %v, well under the agent's minute", d, timeout)
	}
	if s := m.powerState(t); s != types.VirtualMachinePowerStatePoweredOff {
		t.Errorf("source VM %s, want powered off", s)
	}
	m.checkDisks(t)
}

func TestConvertFailsMidwayThenRestarts(t *testing.T) {
	m := newMigration(t, Options{RetryBudget: -1}) // no retries: the cut fails the job
	m.sim.CutNFCAfter(1 << 20)
	r := m.run(t)
	if r.GetOutcome() != agentv1.JobOutcome_JOB_OUTCOME_FAILED || !strings.Contains(r.GetReason(), "unexpected EOF") {
		t.Fatalf("job %s: %q, want FAILED for the cut download", r.GetOutcome(), r.GetReason())
	}
	m.checkLeaseReleased(t, vcsimtest.LeaseAborted, "unexpected EOF")

	r = m.run(t)
	if r.GetOutcome() != agentv1.JobOutcome_JOB_OUTCOME_SUCCEEDED {
		t.Fatalf("restarted job %s: %s", r.GetOutcome(), r.GetReason())
	}
	m.checkDisks(t)
	m.checkVerified(t, r)
	m.checkLeaseReleased(t, vcsimtest.LeaseCompleted, "")
	if n := len(m.sim.Leases.All()); n != 2 {
		t.Errorf("%d leases, want 2", n)
	}
}

func TestConvertFailsWhenTheSourceIsPoweredOn(t *testing.T) {
	m := newMigration(t, Options{})
	m.sim.HoldNFC()
	m.start(t)
	ctx := testContext(t, 30*time.Second)
	m.waitHeldWithUpdates(t)
	task, err := m.vm.PowerOn(ctx)
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		t.Fatalf("power on: %v", err)
	}
	r := m.result(t)
	if r.GetOutcome() != agentv1.JobOutcome_JOB_OUTCOME_FAILED ||
		!strings.Contains(r.GetReason(), "source VM was powered on during the migration") {
		t.Fatalf("job %s: %q, want FAILED because the VM was powered on", r.GetOutcome(), r.GetReason())
	}
	m.sim.Release()
	m.checkLeaseReleased(t, vcsimtest.LeaseAborted, "source VM was powered on during the migration")
}

// waitHeldWithUpdates waits until the export's downloads are held by the
// simulator and its lease has had progress updates meanwhile: the lease
// is kept alive while no byte moves.
func (m *migration) waitHeldWithUpdates(t *testing.T) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		l, ok := m.sim.Leases.Last()
		if m.sim.NFCGets() > 0 && ok && len(l.Progress) >= 3 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no held download with lease updates: %d GETs, lease %+v", m.sim.NFCGets(), l)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestConvertCancelled(t *testing.T) {
	m := newMigration(t, Options{})
	m.sim.HoldNFC()
	m.start(t)
	m.waitHeldWithUpdates(t)
	if !m.runner.Cancel("migrationJobs/j1", m.epoch, "cancelled by the operator") {
		t.Fatal("the runner did not hold the job")
	}
	r := m.result(t)
	if r.GetOutcome() != agentv1.JobOutcome_JOB_OUTCOME_CANCELLED {
		t.Fatalf("job %s: %q, want CANCELLED", r.GetOutcome(), r.GetReason())
	}
	m.sim.Release()
	m.checkLeaseReleased(t, vcsimtest.LeaseAborted, "cancelled by the operator")
}

func TestConvertPrecheckLeavesTheVMAlone(t *testing.T) {
	m := newMigration(t, Options{})
	ctx := testContext(t, 30*time.Second)
	host, err := m.vm.HostSystem(ctx)
	if err != nil {
		t.Fatal(err)
	}
	task, err := host.EnterMaintenanceMode(ctx, 0, false, nil)
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		t.Fatal(err)
	}
	r := m.run(t)
	if r.GetOutcome() != agentv1.JobOutcome_JOB_OUTCOME_FAILED || !strings.Contains(r.GetReason(), "is in maintenance mode") ||
		strings.Contains(r.GetReason(), "\n") {
		t.Fatalf("job %s: %q, want FAILED in one line for the host in maintenance mode", r.GetOutcome(), r.GetReason())
	}
	if s := m.powerState(t); s != types.VirtualMachinePowerStatePoweredOn {
		t.Errorf("source VM %s after a failed pre-check, want still powered on", s)
	}
	if n := len(m.sim.Leases.All()); n != 0 || m.snapshots(t) != 0 {
		t.Errorf("%d leases and %d snapshots after a failed pre-check", n, m.snapshots(t))
	}
}

// TestPoweredOnAfterConvertingFailsTheJob powers the source VM on while
// the job uploads or configures: the job fails with that reason, the
// target is rolled back, and the VM is left as the user made it.
func TestPoweredOnAfterConvertingFailsTheJob(t *testing.T) {
	for _, phase := range []string{"upload", "configure"} {
		t.Run(phase, func(t *testing.T) {
			m := newMigration(t, Options{})
			m.target.hold = phase
			m.start(t)
			select {
			case <-m.target.entered:
			case r := <-m.rep.results:
				t.Fatalf("job ended before %s: %s %q", phase, r.GetOutcome(), r.GetReason())
			case <-time.After(50 * time.Second):
				t.Fatalf("the job did not reach %s in 50 s", phase)
			}
			m.checkLeaseReleased(t, vcsimtest.LeaseCompleted, "")
			ctx := testContext(t, 30*time.Second)
			task, err := m.vm.PowerOn(ctx)
			if err == nil {
				err = task.Wait(ctx)
			}
			if err != nil {
				t.Fatalf("power on: %v", err)
			}
			r := m.result(t)
			if r.GetOutcome() != agentv1.JobOutcome_JOB_OUTCOME_FAILED ||
				!strings.Contains(r.GetReason(), "source VM was powered on during the migration") {
				t.Fatalf("job %s: %q, want FAILED because the VM was powered on", r.GetOutcome(), r.GetReason())
			}
			if n := m.target.rollbacks.Load(); n != 1 {
				t.Errorf("%d rollbacks of the target, want 1", n)
			}
			if s := m.powerState(t); s != types.VirtualMachinePowerStatePoweredOn {
				t.Errorf("source VM %s, want left powered on", s)
			}
		})
	}
}

// TestWatchEndsWithTheJob powers the VM on after a job succeeded: the
// watch has ended with the job, so nothing fails or is rolled back.
func TestWatchEndsWithTheJob(t *testing.T) {
	m := newMigration(t, Options{})
	if r := m.run(t); r.GetOutcome() != agentv1.JobOutcome_JOB_OUTCOME_SUCCEEDED {
		t.Fatalf("job %s: %s", r.GetOutcome(), r.GetReason())
	}
	ctx := testContext(t, 30*time.Second)
	task, err := m.vm.PowerOn(ctx)
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		t.Fatalf("power on: %v", err)
	}
	select {
	case r := <-m.rep.results:
		t.Fatalf("a second result after the job ended: %s %q", r.GetOutcome(), r.GetReason())
	case <-time.After(500 * time.Millisecond):
	}
	if n := m.target.rollbacks.Load(); n != 0 {
		t.Errorf("%d rollbacks after a job that succeeded", n)
	}
}

// TestConvertedDiskThatDiffersFailsVerification: a granule of data
// zeroed in one cache image after the copy (streamOptimized, sparse and
// flat alike) fails the job in verification, naming the disk and the
// chunk, as a target volume that differs does.
func TestConvertedDiskThatDiffersFailsVerification(t *testing.T) {
	for i, sub := range []string{"streamOptimized", "monolithicSparse", "monolithicFlat"} {
		t.Run(sub, func(t *testing.T) {
			m := newMigration(t, Options{})
			disk := m.disks[i]
			off := firstData(t, m.raws[disk])
			m.target.corrupt = func(ctx context.Context, job *runner.Job) error {
				img, err := cache.Open(ctx, job.CacheDir, disk, diskSize, true, job.Log)
				if err != nil {
					return err
				}
				err = img.WriteZeroes(ctx, off, cache.Granule)
				if cerr := img.Close(); err == nil {
					err = cerr
				}
				return err
			}
			r := m.run(t)
			chunk := off / pipeline.DefaultChunkSize * pipeline.DefaultChunkSize
			want := fmt.Sprintf("disk %s: the %d bytes at offset %d differ from the source", disk, pipeline.DefaultChunkSize, chunk)
			if r.GetOutcome() != agentv1.JobOutcome_JOB_OUTCOME_FAILED || !strings.Contains(r.GetReason(), want) {
				t.Fatalf("job %s: %q, want FAILED with %q", r.GetOutcome(), r.GetReason(), want)
			}
		})
	}
}

// firstData is the offset of the first 64 KiB granule of raw holding data.
func firstData(t *testing.T, raw string) int64 {
	b, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	zero := make([]byte, cache.Granule)
	for off := int64(0); off < int64(len(b)); off += cache.Granule {
		if !bytes.Equal(b[off:off+cache.Granule], zero) {
			return off
		}
	}
	t.Fatalf("%s holds no data", raw)
	return 0
}
