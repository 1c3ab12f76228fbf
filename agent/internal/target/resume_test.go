package target

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
	"github.com/ferry-v2v/ferry/agent/internal/pipeline"
	"github.com/ferry-v2v/ferry/agent/internal/runner"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// TestUploadToAnotherHostResumesFromItsCheckpoint: the migration server's
// agent is stopped mid-upload onto a volume of another host, once its
// upload checkpoint records chunks flushed there; a new driver (the agent
// started again) gets the same volume served again (TargetExport.created
// false) and sends only what the checkpoint does not hold: fewer bytes
// than the disk's data. The volume is the cache image byte for byte.
func TestUploadToAnotherHostResumesFromItsCheckpoint(t *testing.T) {
	img, cacheDir := cachedSource(t)
	job := &ferryv1.MigrationJob{Name: "migrationJobs/resume", TargetHost: "hosts/h2", Epoch: 1,
		Target: &ferryv1.TargetVm{VmName: "resume", Disks: []*ferryv1.TargetDisk{{SourceDisk: "vda", SizeBytes: sourceSize}}}}
	h := newTwoHosts(t, job, nil, WorkerConfig{})
	r, worker := h.relay, h.worker
	newDriver := func() *Driver { return h.newDriver(t, 30*time.Second) }
	jobOf := func(limit int64) *runner.Job { return h.runnerJob(t, cacheDir, limit) }
	ckpt := uploadCheckpointPath(cacheDir, "vda", "hosts/h2")
	flushed := func() (chunks int, last bool) {
		b, err := os.ReadFile(ckpt)
		if err != nil {
			return 0, false
		}
		m, err := decodeUploadMarks(b)
		if err != nil {
			t.Fatal(err)
		}
		return m.count(), m.count() == m.chunks()
	}

	// 6 Mbit/s: the 4.5 MiB of data take six seconds; the checkpoint is
	// saved every second. The image's 24 chunks of 2 MiB are 4 with data
	// (of 1, 2, 0.5 and 1 MiB, copied side by side under the limit) and 20
	// holes, done at once: stop once a chunk with data is flushed too.
	first := jobOf(6_000_000)
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- newDriver().Upload(ctx, first) }()
	testkit.WaitFor(t, 30*time.Second, "the upload checkpoint records a chunk with data flushed on h2", func() bool {
		n, _ := flushed()
		return n > sourceSize/pipeline.DefaultChunkSize-4
	})
	stop() // the agent stops mid-upload
	if err := <-done; err == nil {
		t.Fatal("the first upload finished before it was stopped; nothing shows a resume")
	}
	before, complete := flushed()
	if complete {
		t.Fatal("the checkpoint says every chunk was flushed; nothing shows a resume")
	}
	if _, err := os.Stat(ckpt); err != nil {
		t.Fatalf("upload checkpoint: %v", err)
	}

	second := jobOf(0)
	if err := newDriver().Upload(context.Background(), second); err != nil {
		t.Fatal(err)
	}
	if len(r.prepare) != 2 || !r.prepare[0].GetCreated() || r.prepare[1].GetCreated() {
		t.Fatalf("exports %v: want the volume created, then served again as it was", r.prepare)
	}
	sent := second.Upstream.Granted()
	t.Logf("first run sent %d bytes, %d chunks flushed on h2 when it stopped; the second sent %d of the %d bytes of data",
		first.Upstream.Granted(), before, sent, int64(dataBytes))
	// A chunk with data was flushed before the stop, the smallest of them
	// 512 KiB: at least that much is not sent again. The upstream limit
	// counts the verification's read-back too (at most the disk's data),
	// so a run that sent everything again would take 2 × the data.
	if sent <= 0 || sent > 2*dataBytes-512<<10 {
		t.Errorf("the resumed upload and its read-back took %d bytes of the upstream limit; want some, at most twice the disk's %d of data less the 512 KiB chunk flushed already",
			sent, int64(dataBytes))
	}
	if _, last := flushed(); !last {
		t.Error("the checkpoint does not record every chunk after the upload finished")
	}
	vol := h.volume(t)
	worker.Close()
	run(t, "qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", img, vol.Path)

	// The cache image is made again from another source (a new
	// generation) while the volume is kept: the checkpoint, written from
	// the old image, is not trusted; all of the new data goes, and the
	// new image's zeroes overwrite what the old one left on the volume.
	if err := cache.Reset(cacheDir, "vda"); err != nil {
		t.Fatal(err)
	}
	img2 := filepath.Join(t.TempDir(), "other.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", img2, "48M")
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x11 5M 1M", img2)
	convert(t, serveImage(t, img2, "qcow2"), cacheDir)
	other := jobOf(0)
	if err := newDriver().Upload(context.Background(), other); err != nil {
		t.Fatal(err)
	}
	if r.prepare[len(r.prepare)-1].GetCreated() || other.Upstream.Granted() < 1<<20 {
		t.Errorf("onto the kept volume (created %v) the new image's upload sent %d bytes, want all its 1 MiB of data",
			r.prepare[len(r.prepare)-1].GetCreated(), other.Upstream.Granted())
	}
	worker.Close()
	run(t, "qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", img2, vol.Path)

	// A volume the target host created anew holds nothing: the checkpoint
	// is dropped and the whole of the data sent again.
	if err := os.Remove(vol.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	third := jobOf(0)
	if err := newDriver().Upload(context.Background(), third); err != nil {
		t.Fatal(err)
	}
	if !r.prepare[len(r.prepare)-1].GetCreated() || third.Upstream.Granted() < 1<<20 {
		t.Errorf("onto a new volume (created %v) the upload sent %d bytes, want all 1 MiB of data",
			r.prepare[len(r.prepare)-1].GetCreated(), third.Upstream.Granted())
	}
	worker.Close()
	run(t, "qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", img2, vol.Path)
}
