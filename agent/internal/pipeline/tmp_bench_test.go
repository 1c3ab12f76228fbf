package pipeline

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
)

func tmpFerry(b *testing.B, sock string, size int64, chunk, inflight int, ckpt bool, compressed bool) time.Duration {
	dir := b.TempDir()
	start := time.Now()
	img, err := cache.Open(context.Background(), dir, "vda", size, compressed, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	var cp *Checkpoint
	if ckpt {
		cp, _ = LoadCheckpoint(img.CheckpointPath(), size, int64(chunk))
	}
	if _, err := Copy(context.Background(), dialSource(b, sock), img, Options{Checkpoint: cp, ChunkSize: chunk, InFlight: inflight}); err != nil {
		b.Fatal(err)
	}
	img.Close()
	d := time.Since(start)
	os.RemoveAll(dir)
	return d
}

func BenchmarkTmpFerry(b *testing.B) {
	small, _ := benchSources(b)
	s1 := serveReadOnly(b, small, "qcow2")
	for r := 0; r < 2; r++ {
		for _, v := range []struct {
			chunk, inflight int
			ckpt, comp      bool
		}{
			{2 << 20, 16, true, true},
			{2 << 20, 16, false, true},
			{2 << 20, 4, true, true},
			{2 << 20, 32, true, true},
			{256 << 10, 64, true, true},
			{1 << 20, 16, true, true},
			{2 << 20, 16, true, false},
		} {
			d := tmpFerry(b, s1, 4<<30, v.chunk, v.inflight, v.ckpt, v.comp)
			b.Logf("%+v %.2f", v, d.Seconds())
		}
	}
}
