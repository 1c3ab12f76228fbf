package target

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"libvirt.org/go/libvirt"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
	"github.com/ferry-v2v/ferry/agent/internal/pipeline"
	"github.com/ferry-v2v/ferry/agent/internal/runner"
	"github.com/ferry-v2v/ferry/pkg/nbd"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/ratelimit"
	"github.com/ferry-v2v/ferry/pkg/testkit"
	"github.com/ferry-v2v/ferry/pkg/tlsutil"
)

// relay plays the leader between two agents in one process: it turns a
// TargetRequest into the TargetWork the session package relays (tested
// there) and hands it to the target host's worker.
type relay struct {
	job      *ferryv1.MigrationJob
	storage  *ferryv1.PrimaryStorage
	networks []*ferryv1.L3Network
	peer     string
	worker   *Worker
	asked    []agentv1.TargetAction
}

func (r *relay) Request(ctx context.Context, req *agentv1.TargetRequest) (*agentv1.TargetWorkResult, error) {
	r.asked = append(r.asked, req.GetAction())
	res := r.worker.Do(ctx, &agentv1.TargetWork{RequestId: "r", Action: req.GetAction(), Job: r.job, Epoch: req.GetEpoch(),
		PrimaryStorage: r.storage, L3Networks: r.networks, PeerHost: r.peer, SourceVm: req.GetSourceVm(), Nvram: req.GetNvram()})
	if res.GetError() != "" {
		return res, errors.New(res.GetError())
	}
	return res, nil
}

// twoHosts is the setup the tests of a job placed on another host share:
// two agents in one process, "ms" (the migration server) and "h2" (the
// target host), each with its own certificate of one install's CA; h2's
// worker over local storage of its own, and a relay to it. What ms runs
// is the caller's (newDriver, runnerJob).
type twoHosts struct {
	pki     string
	storage *ferryv1.PrimaryStorage
	job     *ferryv1.MigrationJob
	worker  *Worker
	relay   *down
}

// newTwoHosts sets up the two hosts for job (whose target_host is
// hosts/h2), h2's volumes on storage (nil: a local storage of its own).
func newTwoHosts(t *testing.T, job *ferryv1.MigrationJob, storageOf *ferryv1.PrimaryStorage, wcfg WorkerConfig) *twoHosts {
	t.Helper()
	requireTools(t, "qemu-img", "qemu-nbd", "qemu-io")
	h := &twoHosts{pki: t.TempDir(), storage: storageOf, job: job}
	if err := tlsutil.InitPKI(h.pki, tlsutil.Options{Agents: []string{"ms", "h2"}}); err != nil {
		t.Fatal(err)
	}
	if h.storage == nil {
		h.storage = storage(ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_LOCAL, t.TempDir(), "", "")
	}
	wcfg.IdentityDir, wcfg.MigrationAddress = h.dirOf("h2"), "127.0.0.1"
	if wcfg.Options.Log == nil {
		wcfg.Options.Log = testkit.Logger(t)
	}
	h.worker = NewWorker(wcfg)
	t.Cleanup(h.worker.Close)
	h.relay = &down{relay: &relay{job: job, storage: h.storage, peer: "hosts/ms", worker: h.worker}}
	return h
}

// dirOf is a host's certificate directory.
func (h *twoHosts) dirOf(host string) string {
	return filepath.Join(h.pki, tlsutil.IdentityDir(agentID(host)))
}

// newDriver is ms's target driver (a new one: the agent started again),
// keeping at an upload onto h2 for budget.
func (h *twoHosts) newDriver(t *testing.T, budget time.Duration) *Driver {
	return NewDriver("", Options{Log: testkit.Logger(t), Remote: Remote{HostName: "ms", IdentityDir: h.dirOf("ms"), Targets: h.relay, RetryBudget: budget}})
}

// runnerJob is ms's run of the job from cacheDir under an upstream limit
// of limit bits per second (0: none).
func (h *twoHosts) runnerJob(t *testing.T, cacheDir string, limit int64) *runner.Job {
	return &runner.Job{Assignment: &agentv1.Assignment{Job: h.job, Epoch: h.job.GetEpoch(), PrimaryStorage: h.storage, L3Networks: h.relay.networks},
		CacheDir: cacheDir, Log: testkit.Logger(t), Upstream: ratelimit.New(limit)}
}

// volume is the job's vda on h2.
func (h *twoHosts) volume(t *testing.T) Volume {
	v, err := NameVolume(h.storage, h.job.GetName(), "vda", sourceSize)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// cachedSource is a source image and a cache directory holding its copy,
// as CONVERTING leaves it.
func cachedSource(t *testing.T) (img, cacheDir string) {
	img, srcEp := sourceImage(t)
	cacheDir = shortTempDir(t)
	convert(t, srcEp, cacheDir)
	return img, cacheDir
}

// TestJobPlacedOnAnotherHost: the migration server's agent (ms) runs a
// job whose VM is placed on h2. h2's agent creates the volume on its
// local storage and serves it to ms alone over TLS; ms uploads its cache
// image under the upstream limiter; h2 defines the domain on its libvirt
// (TCG) with that volume; rollback removes both. Two agents in one
// process, each with its own certificate, over loopback, one libvirtd.
func TestJobPlacedOnAnotherHost(t *testing.T) {
	e := newLibvirtEnv(t)
	// ms's cache: the job's vda image and its checkpoint with checksums,
	// as CONVERTING leaves them.
	img, cacheDir := cachedSource(t)
	name := "ferrytest-" + randHex(4)
	job := &ferryv1.MigrationJob{Name: "migrationJobs/" + name, TargetHost: "hosts/h2", AssignedHost: "hosts/ms", Epoch: 3,
		Options: &ferryv1.MigrationOptions{AutoStart: new(bool)},
		Target: &ferryv1.TargetVm{VmName: name, Cpus: 1, MemoryBytes: 64 << 20, PrimaryStorage: e.storage.GetName(),
			Disks: []*ferryv1.TargetDisk{{SourceDisk: "vda", SizeBytes: sourceSize}},
			Nics:  []*ferryv1.TargetNic{{SourceMac: "52:54:00:" + colonHex(3), L3Network: "l3Networks/test", Ip: e.subnet + "60"}}}}
	var fenced []string
	h := newTwoHosts(t, job, e.storage, WorkerConfig{Options: e.opts(t),
		Fence: func(_ context.Context, j string, epoch int64, write string) error {
			fenced = append(fenced, write)
			if j != job.GetName() || epoch != 3 {
				t.Errorf("fence of %s epoch %d", j, epoch)
			}
			return nil
		}})
	r := h.relay.relay
	r.networks = []*ferryv1.L3Network{{Name: "l3Networks/test", LibvirtNetwork: e.network}}
	d := h.newDriver(t, 0)
	rj := h.runnerJob(t, cacheDir, 0)
	up := rj.Upstream
	vol := h.volume(t)
	t.Cleanup(func() { _ = d.Rollback(context.Background(), rj) })

	ctx := context.Background()
	if err := d.Upload(ctx, rj); err != nil {
		t.Fatal(err)
	}
	if up.Granted() < dataBytes {
		t.Errorf("the upstream limiter granted %d bytes, want at least the %d of data", up.Granted(), dataBytes)
	}
	// The upload read the volume back as it went, but rj has no progress
	// to record it: the verification reads it back through h2's export,
	// and catches a volume that differs: one byte changed through the
	// export, as a buggy writer would.
	if err := d.Verify(ctx, rj); err != nil {
		t.Fatal(err)
	}
	flipThrough(t, d, job, 2<<20+777)
	var mm *pipeline.MismatchError
	if err := d.Verify(ctx, rj); !errors.As(err, &mm) {
		t.Errorf("verify of a changed volume = %v, want a mismatch", err)
	}
	flipThrough(t, d, job, 2<<20+777)
	warnings, err := d.Configure(ctx, rj)
	if err != nil {
		t.Fatal(err)
	}
	// The domain, defined by h2's worker, runs on h2's volume, which holds the source's bytes.
	run(t, "qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", img, vol.Path)

	x, state := e.domain(t, name)
	if x.Type != "qemu" || len(x.Devices.Disks) == 0 || x.Devices.Disks[0].Source.File.File != vol.Path || state != libvirt.DOMAIN_SHUTOFF {
		t.Errorf("domain type %s, first disk %+v, state %d (warnings %v); want qemu on %s, shut off (auto_start false)",
			x.Type, x.Devices.Disks[0].Source, state, warnings, vol.Path)
	}
	want := "create volume " + vol.Path + "|serve volume " + vol.Path + " writable|define domain " + name
	if got := strings.Join(fenced, "|"); got != want {
		t.Errorf("fenced writes on h2:\n got %s\nwant %s", got, want)
	}
	if err := d.Rollback(ctx, rj); err != nil {
		t.Fatal(err)
	}
	if _, err := e.conn.LookupDomainByName(name); err == nil {
		t.Error("the domain outlived the rollback")
	}
	if _, err := os.Stat(vol.Path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the volume outlived the rollback: %v", err)
	}
	wantAsked := []agentv1.TargetAction{agentv1.TargetAction_TARGET_ACTION_PREPARE_VOLUMES, agentv1.TargetAction_TARGET_ACTION_DEFINE_DOMAIN,
		agentv1.TargetAction_TARGET_ACTION_ROLLBACK}
	if len(r.asked) != 3 || r.asked[0] != wantAsked[0] || r.asked[1] != wantAsked[1] || r.asked[2] != wantAsked[2] {
		t.Errorf("asked %v, want %v", r.asked, wantAsked)
	}
}

// flipThrough inverts one byte of the job's first volume through the
// export its target host serves.
func flipThrough(t *testing.T, d *Driver, job *ferryv1.MigrationJob, off int64) {
	t.Helper()
	ctx := context.Background()
	dst, err := d.remoteEndpoint(job.GetTargetHost(), d.exports.get(job.GetName())[0])
	if err != nil {
		t.Fatal(err)
	}
	c, err := dst.dial(ctx, nbd.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b := make([]byte, 1)
	if err := c.ReadAt(ctx, b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if err := c.WriteAt(ctx, b, off, true); err != nil {
		t.Fatal(err)
	}
}

// convert copies the source into a cache image of dir with a checkpoint,
// as CONVERTING does.
func convert(t *testing.T, src Endpoint, dir string) {
	t.Helper()
	ctx := context.Background()
	sc, err := nbd.Dial(ctx, "unix", src.Socket, nbd.Options{Logger: testkit.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	img, err := cache.Open(ctx, dir, "vda", sc.Size(), false, testkit.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	cp, err := pipeline.LoadCheckpoint(img.CheckpointPath(), sc.Size(), pipeline.DefaultChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pipeline.Copy(ctx, pipeline.NBDSource{Client: sc}, img, pipeline.Options{Checkpoint: cp, Logger: testkit.Logger(t)}); err != nil {
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
}

// down is a relay whose target host can be taken away: while down, every
// request is answered as the leader answers for a disconnected host.
type down struct {
	*relay
	mu      sync.Mutex
	gone    bool
	prepare []*agentv1.TargetExport
}

func (d *down) Request(ctx context.Context, req *agentv1.TargetRequest) (*agentv1.TargetWorkResult, error) {
	d.mu.Lock()
	gone := d.gone
	d.mu.Unlock()
	if gone {
		return nil, errors.New("target host hosts/h2 is not connected")
	}
	res, err := d.relay.Request(ctx, req)
	if err == nil && req.GetAction() == agentv1.TargetAction_TARGET_ACTION_PREPARE_VOLUMES {
		d.mu.Lock()
		d.prepare = append(d.prepare, res.GetExports()...)
		d.mu.Unlock()
	}
	return res, err
}

func (d *down) setGone(v bool) {
	d.mu.Lock()
	d.gone = v
	d.mu.Unlock()
}

// TestUploadToAnotherHostSurvivesACut: the target host's qemu-nbd goes
// away mid-upload (its agent stopped serving) and the host answers
// nothing for a while; the migration server's agent keeps asking within
// its budget, gets the same volume served again (not created anew) and
// finishes onto it, byte for byte. The budget is per outage: the cut
// comes after the upload has run for longer than the budget. With the
// host gone past the budget, the upload fails naming the host.
func TestUploadToAnotherHostSurvivesACut(t *testing.T) {
	img, cacheDir := cachedSource(t)
	job := &ferryv1.MigrationJob{Name: "migrationJobs/cut", TargetHost: "hosts/h2", Epoch: 1,
		Target: &ferryv1.TargetVm{VmName: "cut", Disks: []*ferryv1.TargetDisk{{SourceDisk: "vda", SizeBytes: sourceSize}}}}
	h := newTwoHosts(t, job, nil, WorkerConfig{})
	r, worker := h.relay, h.worker
	const budget = 2 * time.Second
	d := h.newDriver(t, budget)
	// 4 Mbit/s: the 4.5 MiB of data take over nine seconds; the cut, of
	// half a second, comes once the upload has run for longer than the
	// budget and has chunks flushed on h2.
	rj := h.runnerJob(t, cacheDir, 4_000_000)
	start := time.Now()
	go func() {
		testkit.WaitFor(t, 20*time.Second, "chunks flushed on h2", func() bool {
			b, err := os.ReadFile(uploadCheckpointPath(cacheDir, "vda", "hosts/h2"))
			if err != nil {
				return false
			}
			m, err := decodeUploadMarks(b)
			return err == nil && m.count() > 0
		})
		time.Sleep(time.Until(start.Add(budget + budget/2)))
		r.setGone(true)
		_ = worker.release(job.GetName()) // the agent's qemu-nbd goes away with it
		time.Sleep(500 * time.Millisecond)
		r.setGone(false)
	}()
	if err := d.Upload(context.Background(), rj); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < budget+budget/2 {
		t.Fatalf("the upload took %s, done before the cut; nothing shows the budget is per outage", took)
	}
	vol := h.volume(t)
	worker.Close()
	run(t, "qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", img, vol.Path)
	if len(r.prepare) < 2 || !r.prepare[0].GetCreated() || r.prepare[len(r.prepare)-1].GetCreated() {
		t.Errorf("exports %v: want the volume created once, then served again as it was", r.prepare)
	}

	// Gone for good: the upload gives up after its budget.
	d.opts.Remote.RetryBudget = time.Second
	r.setGone(true)
	err := d.Upload(context.Background(), rj)
	if err == nil || !strings.Contains(err.Error(), "target host hosts/h2 lost") || !strings.Contains(err.Error(), "not connected") {
		t.Fatalf("upload with the target host gone: %v", err)
	}
}

// up is how many bytes the job's upload has taken from its limiter.
func up(j *runner.Job) int64 { return j.Upstream.Granted() }
