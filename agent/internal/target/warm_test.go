package target

import (
	"bytes"
	"context"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/ferry-v2v/ferry/agent/internal/pipeline"
	"github.com/ferry-v2v/ferry/agent/internal/runner"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/ratelimit"
)

// TestDeltaSink: the cutover's sink writes data and zero pieces onto a
// real qcow2 volume served by qemu-nbd, reading each back as it goes
// (samePiece tells a piece that came back changed), and Finish counts
// and flushes them.
func TestDeltaSink(t *testing.T) {
	requireTools(t, "qemu-img", "qemu-nbd")
	dir := shortTempDir(t)
	vol := Volume{Type: ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_LOCAL, Format: "qcow2", Size: 8 << 20,
		Path: filepath.Join(dir, "vda.qcow2"), Dir: dir}
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", vol.Path, "8M")
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -q -P 0x55 0 8M", vol.Path)
	ctx := context.Background()
	job := &runner.Job{Upstream: ratelimit.New(0), Log: slog.New(slog.DiscardHandler)}
	s := &deltaSink{job: job, dir: shortTempDir(t), disks: map[string]*sinkDisk{}} // Close removes dir
	if err := s.open(ctx, NewUploader(UploadDeps{}), "vda", vol, 0); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	data := bytes.Repeat([]byte{0xab}, 1<<20)
	if err := s.Write(ctx, "vda", pipeline.Extent{Offset: 1 << 20, Length: 1 << 20}, data); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(ctx, "vda", pipeline.Extent{Offset: 4 << 20, Length: 1 << 20, Zero: true}, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(ctx, "nope", pipeline.Extent{Offset: 0, Length: 1}, []byte{1}); err == nil {
		t.Error("a piece of a disk the job lacks was taken")
	}
	n, err := s.Finish(ctx)
	if err != nil || n != 2<<20 {
		t.Fatalf("Finish = %d, %v; want 2 MiB written", n, err)
	}
	// The read-back comparison: a byte changed, or data where zeroes were
	// written, is a mismatch.
	piece := pipeline.Extent{Offset: 0, Length: 4}
	zero := pipeline.Extent{Offset: 0, Length: 4, Zero: true}
	for _, c := range []struct {
		got, data []byte
		e         pipeline.Extent
		same      bool
	}{
		{[]byte{1, 2, 3, 4}, []byte{1, 2, 3, 4}, piece, true},
		{[]byte{1, 2, 0, 4}, []byte{1, 2, 3, 4}, piece, false},
		{make([]byte, 4), nil, zero, true},
		{[]byte{0, 0, 9, 0}, nil, zero, false},
	} {
		if got := samePiece(c.got, c.e, c.data); got != c.same {
			t.Errorf("samePiece(%v, %+v, %v) = %v", c.got, c.e, c.data, got)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("a second Close: %v", err)
	}
	out := run(t, "qemu-io", "-r", "-f", "qcow2", "-c", "read -q -P 0xab 1M 1M", "-c", "read -q -P 0x55 2M 2M", vol.Path)
	if out != "" {
		t.Errorf("volume after the sink: %s", out)
	}
}
