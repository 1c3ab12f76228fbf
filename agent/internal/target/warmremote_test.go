package target

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"libvirt.org/go/libvirt"

	"github.com/ferry-v2v/ferry/agent/internal/pipeline"
	"github.com/ferry-v2v/ferry/agent/internal/runner"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// TestWarmRoundsOntoAnotherHost: a warm job whose VM is placed on h2,
// with h2's local storage. After the first round's upload, a later
// round's delta (data, zeroes, a range longer than one piece) goes from
// ms's cache onto h2's volume through h2's TLS export, under ms's
// upstream limit, and reads back identical; so does the next, after h2's
// agent restarted (its exports gone: ms asks for them again and h2 serves
// the same volume, not a new one). The cutover's sink writes onto h2's
// volume the same way; h2 defines the domain ahead, stopped, with the
// volumes still served, and starts it once asked. A volume h2 lost
// between rounds fails the round (ErrRemoteVolumeLost), also once ms's
// agent restarted; the rollback removes h2's domain and volume.
func TestWarmRoundsOntoAnotherHost(t *testing.T) {
	e := newLibvirtEnv(t)
	_, cacheDir := cachedSource(t)
	name := "ferrytest-" + randHex(4)
	job := &ferryv1.MigrationJob{Name: "migrationJobs/" + name, TargetHost: "hosts/h2", AssignedHost: "hosts/ms", Epoch: 2,
		Options: &ferryv1.MigrationOptions{Mode: ferryv1.MigrationMode_MIGRATION_MODE_WARM, AutoStart: new(bool)},
		Target: &ferryv1.TargetVm{VmName: name, Cpus: 1, MemoryBytes: 64 << 20, PrimaryStorage: e.storage.GetName(),
			Disks: []*ferryv1.TargetDisk{{SourceDisk: "vda", SizeBytes: sourceSize}},
			Nics:  []*ferryv1.TargetNic{{SourceMac: "52:54:00:" + colonHex(3), L3Network: "l3Networks/test"}}}}
	var mu sync.Mutex
	var fenced []string
	h := newTwoHosts(t, job, e.storage, WorkerConfig{Options: e.opts(t),
		Fence: func(_ context.Context, _ string, _ int64, write string) error {
			mu.Lock()
			fenced = append(fenced, write)
			mu.Unlock()
			return nil
		}})
	h.relay.networks = []*ferryv1.L3Network{{Name: "l3Networks/test", LibvirtNetwork: e.network}}
	d := h.newDriver(t, 0)
	rj := h.runnerJob(t, cacheDir, 0)
	vol := h.volume(t)
	cacheImg := filepath.Join(cacheDir, "vda.raw")
	t.Cleanup(func() { _ = d.Rollback(context.Background(), rj) })
	ctx := context.Background()

	// Round 1: the upload and its verification, as any job placed on h2.
	if err := d.Upload(ctx, rj); err != nil {
		t.Fatal(err)
	}
	if err := d.Verify(ctx, rj); err != nil {
		t.Fatal(err)
	}
	identical := func(when string) {
		t.Helper()
		// h2's qemu-nbd still serves the volume (flushed): read it shared.
		if out, err := exec.Command("qemu-img", "compare", "-U", "-f", "raw", "-F", "qcow2", cacheImg, vol.Path).CombinedOutput(); err != nil {
			t.Fatalf("%s: h2's volume differs from ms's cache: %v\n%s", when, err, out)
		}
	}
	identical("after round 1")

	// Round 2: the source's changes as a round leaves them in the cache.
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x21 2M 64k", "-c", "write -z 20M 512k", "-c", "write -P 0x22 40M 1600k", cacheImg)
	round2 := []runner.DiskDelta{{Disk: "vda", Extents: []pipeline.Extent{
		{Offset: 2 << 20, Length: 64 << 10}, {Offset: 20 << 20, Length: 512 << 10, Zero: true}, {Offset: 40 << 20, Length: 1600 << 10}}}}
	before := rj.Upstream.Granted()
	n, err := d.ApplyDelta(ctx, rj, round2, true)
	if want := int64(64<<10 + 512<<10 + 1600<<10); err != nil || n != want {
		t.Fatalf("round 2: ApplyDelta = %d, %v; want %d bytes", n, err, want)
	}
	if got := rj.Upstream.Granted() - before; got != n {
		t.Errorf("round 2 took %d bytes of the upstream limit; want the %d written", got, n)
	}
	identical("after round 2")
	asked := len(h.relay.asked)

	// Round 3, h2's agent restarted in between: its exports are gone.
	h.worker.Close()
	h.worker = NewWorker(h.worker.cfg)
	t.Cleanup(h.worker.Close)
	h.relay.worker = h.worker
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x31 2M 64k", "-c", "write -P 0x32 30M 128k", cacheImg)
	round3 := []runner.DiskDelta{{Disk: "vda", Extents: []pipeline.Extent{{Offset: 2 << 20, Length: 64 << 10}, {Offset: 30 << 20, Length: 128 << 10}}}}
	if n, err := d.ApplyDelta(ctx, rj, round3, false); err != nil || n != 192<<10 {
		t.Fatalf("round 3: ApplyDelta = %d, %v; want 192 KiB", n, err)
	}
	identical("after round 3")
	p := h.relay.prepare
	if len(h.relay.asked) != asked+1 || len(p) < 2 || !p[0].GetCreated() || p[len(p)-1].GetCreated() {
		t.Errorf("asked %v, exports %v; want one more PREPARE_VOLUMES serving the volume as it was", h.relay.asked, p)
	}
	// A round with nothing changed asks and writes nothing.
	if n, err := d.ApplyDelta(ctx, rj, []runner.DiskDelta{{Disk: "vda", Extents: []pipeline.Extent{}}}, true); err != nil || n != 0 {
		t.Errorf("an empty round: %d, %v", n, err)
	}

	// The cutover: the volume is opened while the source runs (h2's
	// export stopped meanwhile: asked again), the domain defined ahead,
	// stopped, the last delta written and read back piece by piece.
	_ = h.worker.release(job.GetName())
	sink, err := d.OpenDeltaSink(ctx, rj)
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	defined, _, err := d.DefineAhead(ctx, rj)
	if err != nil || !defined {
		t.Fatalf("DefineAhead = %v, %v", defined, err)
	}
	if _, state := e.domain(t, name); state != libvirt.DOMAIN_SHUTOFF {
		t.Errorf("the domain defined ahead is in state %d; want shut off", state)
	}
	last := bytes.Repeat([]byte{0x41}, 1<<20)
	if err := sink.Write(ctx, "vda", pipeline.Extent{Offset: 8 << 20, Length: 1 << 20}, last); err != nil {
		t.Fatal(err)
	}
	if err := sink.Write(ctx, "vda", pipeline.Extent{Offset: 40 << 20, Length: 1 << 20, Zero: true}, nil); err != nil {
		t.Fatal(err)
	}
	if n, err := sink.Finish(ctx); err != nil || n != 2<<20 {
		t.Fatalf("Finish = %d, %v; want 2 MiB", n, err)
	}
	if err := sink.Close(); err != nil {
		t.Fatal(err)
	}
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x41 8M 1M", "-c", "write -z 40M 1M", cacheImg)
	identical("after the cutover's delta")
	start := true
	job.Options.AutoStart = &start
	if _, err := d.StartDefined(ctx, rj); err != nil {
		t.Fatal(err)
	}
	x, state := e.domain(t, name)
	if state != libvirt.DOMAIN_RUNNING || x.Devices.Disks[0].Source.File.File != vol.Path {
		t.Errorf("domain state %d on %+v; want running on %s", state, x.Devices.Disks[0].Source, vol.Path)
	}
	mu.Lock()
	got := strings.Join(fenced, "|")
	mu.Unlock()
	if !strings.HasSuffix(got, "serve volume "+vol.Path+" writable|define domain "+name+"|start domain "+name) {
		t.Errorf("fenced writes on h2: %s", got)
	}

	// A volume h2 lost between rounds is not written onto afresh.
	if err := d.Rollback(ctx, rj); err != nil {
		t.Fatal(err)
	}
	if _, err := e.conn.LookupDomainByName(name); err == nil {
		t.Error("the domain outlived the rollback")
	}
	if _, err := os.Stat(vol.Path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the volume outlived the rollback: %v", err)
	}
	_, err = d.ApplyDelta(ctx, rj, round3, false)
	if !errors.Is(err, ErrRemoteVolumeLost) || !strings.Contains(err.Error(), "disk vda on hosts/h2") {
		t.Errorf("a round onto a lost volume: %v; want ErrRemoteVolumeLost naming the disk and host", err)
	}
	// The volume h2 made instead exists now; ms, restarted, still refuses it.
	if _, err := h.newDriver(t, 0).OpenDeltaSink(ctx, rj); !errors.Is(err, ErrRemoteVolumeLost) {
		t.Errorf("a cutover onto a lost volume, after ms restarted: %v; want ErrRemoteVolumeLost", err)
	}
	if err := d.Rollback(ctx, rj); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(lostMarker(cacheDir, "hosts/h2")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the rollback left the lost volume's marker: %v", err)
	}
	want := []agentv1.TargetAction{agentv1.TargetAction_TARGET_ACTION_DEFINE_DOMAIN_STOPPED, agentv1.TargetAction_TARGET_ACTION_START_DOMAIN}
	if !containsInOrder(h.relay.asked, want) {
		t.Errorf("asked h2 %v; want %v among them, in order", h.relay.asked, want)
	}
}

// containsInOrder reports whether want occurs in got, in order.
func containsInOrder(got, want []agentv1.TargetAction) bool {
	i := 0
	for _, a := range got {
		if i < len(want) && a == want[i] {
			i++
		}
	}
	return i == len(want)
}
