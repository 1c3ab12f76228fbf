package target

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/ferry-v2v/ferry/agent/internal/pipeline"
	"github.com/ferry-v2v/ferry/agent/internal/runner"
	"github.com/ferry-v2v/ferry/pkg/nbd"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/ratelimit"
)

// TestDeltaSink: the cutover's sink writes data and zero pieces onto a
// real qcow2 volume served by qemu-nbd, and its verification reads them
// back against what was written: it passes on the volume as written and
// fails with ErrMismatch once a piece on the volume changed behind it.
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
	n, err := s.Finish(ctx, true)
	if err != nil || n != 2<<20 {
		t.Fatalf("Finish = %d, %v; want 2 MiB written and verified", n, err)
	}
	// The volume changes behind the sink's back: the read-back sees it.
	other, err := nbd.Dial(ctx, "unix", s.disks["vda"].srv.Socket(), nbd.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := other.WriteAt(ctx, []byte{1}, 4<<20+7, false); err != nil {
		t.Fatal(err)
	}
	other.Close()
	if _, err := s.Finish(ctx, true); !errors.Is(err, pipeline.ErrMismatch) {
		t.Errorf("Finish after a change on the volume = %v; want ErrMismatch", err)
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
