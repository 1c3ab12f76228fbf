package vmware

import (
	"bufio"
	"context"
	"fmt"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
	"github.com/ferry-v2v/ferry/agent/internal/pipeline"
	"github.com/ferry-v2v/ferry/agent/internal/runner"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// sniffLen is how much of a disk URL's body tells its format.
const sniffLen = 1024

// exportProgress counts the disk offset each copy has reached, for the
// job's progress and the lease's percent.
type exportProgress struct {
	job   *runner.Job
	total int64
	done  map[string]*atomic.Int64
}

func newExportProgress(job *runner.Job, disks []Disk) *exportProgress {
	p := &exportProgress{job: job, done: map[string]*atomic.Int64{}}
	for _, d := range disks {
		p.total += d.CapacityBytes
		p.done[d.Name] = new(atomic.Int64)
		job.Progress.SetTotal(d.Name, d.CapacityBytes)
	}
	return p
}

func (p *exportProgress) set(disk string, done int64) {
	p.done[disk].Store(done)
	p.job.Progress.Set(disk, done)
}

// percent is the share of all disks done, below 100 until the lease is
// completed.
func (p *exportProgress) percent() int32 {
	var done int64
	for _, d := range p.done {
		done += d.Load()
	}
	if p.total <= 0 {
		return 0
	}
	return int32(min(99, done*100/p.total))
}

// copyDisk downloads one disk of the export and decodes it into the
// disk's cache image. An NFC stream cannot resume, so the image starts
// anew on every attempt.
func copyDisk(ctx context.Context, conn *Conn, job *runner.Job, vm *VM, disk Disk, u *url.URL, prog *exportProgress) error {
	if u == nil {
		return fmt.Errorf("%w: the lease has no URL for the disk", ErrExport)
	}
	start := time.Now()
	if err := cache.Reset(job.CacheDir, disk.Name); err != nil {
		return err
	}
	body, err := conn.download(ctx, u)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrExport, err)
	}
	defer body.Close()
	lr := &limitedReader{ctx: ctx, r: body, lim: job.Downstream}
	br := bufio.NewReaderSize(lr, 1<<20)
	head, err := peek(br, sniffLen)
	if err != nil {
		return fmt.Errorf("%w: read the disk: %w", ErrExport, err)
	}
	format := sniff(head)
	compressed := job.Assignment.GetJob().GetOptions().GetCompression() != ferryv1.Compression_COMPRESSION_NONE
	img, err := cache.Open(ctx, job.CacheDir, disk.Name, disk.CapacityBytes, compressed, job.Log)
	if err != nil {
		return err
	}
	defer img.Close()
	sums, err := newSummingSink(img, disk.CapacityBytes)
	if err != nil {
		return err
	}
	progress := func(done int64) {
		sums.sums.Seal(done)
		prog.set(disk.Name, done)
	}
	switch format {
	case formatSparse:
		err = decodeSparse(ctx, br, sums, 0, disk.CapacityBytes, progress)
	case formatDescriptor:
		err = copyDescriptor(ctx, conn, br, sums, vm, disk, job, progress)
	case formatRaw:
		err = copyFlat(ctx, br, sums, 0, disk.CapacityBytes, progress)
		if err == nil {
			err = img.Flush(ctx)
		}
	default:
		err = fmt.Errorf("%w: the disk URL serves a %s, which this driver does not read", ErrExport, format)
	}
	if err = lr.explain(err); err != nil {
		return fmt.Errorf("%s: %w", format, err)
	}
	// Every format flushed the image: its checksums can be made durable.
	late, err := sums.sums.Finish(ctx, img)
	if err != nil {
		return fmt.Errorf("record the checksums of the disk: %w", err)
	}
	if err := img.Close(); err != nil {
		return err
	}
	prog.set(disk.Name, disk.CapacityBytes)
	job.Log.Info("disk copied to the cache", "disk", disk.Name, "format", format, "read_bytes", lr.n,
		"chunks_read_back", late, "seconds", time.Since(start).Seconds())
	return nil
}

// summingSink writes to the cache image and records the checksum of each
// chunk in the image's checkpoint, as the KVM copy does, so UPLOADING can
// verify the target against them.
type summingSink struct {
	img  *cache.Image
	sums *pipeline.StreamSums
}

// newSummingSink starts the checksums of img, a new image: its checkpoint
// starts empty, and any checksums an earlier attempt left are removed.
func newSummingSink(img *cache.Image, size int64) (*summingSink, error) {
	cp, err := pipeline.LoadCheckpoint(img.CheckpointPath(), size, pipeline.DefaultChunkSize)
	if err != nil {
		return nil, err
	}
	sums, err := pipeline.NewStreamSums(cp, 0)
	if err != nil {
		return nil, err
	}
	return &summingSink{img: img, sums: sums}, nil
}

func (s *summingSink) WriteAt(ctx context.Context, p []byte, off int64) error {
	if err := s.img.WriteAt(ctx, p, off); err != nil {
		return err
	}
	return s.sums.Write(p, off)
}

func (s *summingSink) Flush(ctx context.Context) error { return s.img.Flush(ctx) }
