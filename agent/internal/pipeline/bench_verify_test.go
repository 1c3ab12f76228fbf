package pipeline

import (
	"context"
	"log/slog"
	"os/exec"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
	"github.com/ferry-v2v/ferry/pkg/nbd"
)

// BenchmarkVerify times the verification of a disk of 4 GiB and one of 64
// GiB holding the same 1 GiB of data (the 64 GiB one has 60 GiB more of
// hole), side by side with qemu-img compare of the same images, in
// interleaved rounds (FERRY_BENCH_ROUNDS, default 3). The target read
// back is the source image itself, served by qemu-nbd as the agent serves
// an uploaded volume; the checksums are those a CONVERTING copy recorded.
// Goal: the 64 GiB disk takes at most 1.2 times the 4 GiB one.
func BenchmarkVerify(b *testing.B) {
	requireQemu(b)
	rounds := benchRounds(3)
	small, large := benchSources(b)
	type disk struct {
		image, cache string
		sock         string
		cp           *Checkpoint
	}
	prepare := func(image string, size int64) disk {
		sock, _ := serveReadOnlyPID(b, image, "qcow2")
		dir := b.TempDir()
		img, err := cache.Open(context.Background(), dir, "vda", size, true, slog.New(slog.DiscardHandler))
		if err != nil {
			b.Fatal(err)
		}
		cp, err := LoadCheckpoint(img.CheckpointPath(), size, DefaultChunkSize)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := Copy(context.Background(), NBDSource{Client: dialNBD(b, sock, nbd.Options{})}, img, Options{Checkpoint: cp}); err != nil {
			b.Fatal(err)
		}
		if err := img.Close(); err != nil {
			b.Fatal(err)
		}
		if cp, err = OpenCheckpoint(img.CheckpointPath()); err != nil {
			b.Fatal(err)
		}
		return disk{image: image, cache: img.Path(), sock: sock, cp: cp}
	}
	disks := []disk{prepare(small, 4<<30), prepare(large, 64<<30)}
	verify := func(d disk) func(bool) benchRound {
		return func(bool) benchRound {
			start := time.Now()
			c := dialNBD(b, d.sock, nbd.Options{})
			st, err := Verify(context.Background(), NBDSource{Client: c}, d.cp, 4)
			if err != nil {
				b.Fatal(err)
			}
			if st.ReadBytes != 1<<30 {
				b.Fatalf("verify read %d bytes, want the 1 GiB of data", st.ReadBytes)
			}
			r := benchRound{d: time.Since(start)}
			c.Close()
			return r
		}
	}
	compare := func(d disk) func(bool) benchRound {
		return func(bool) benchRound {
			start := time.Now()
			if out, err := exec.Command("qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", d.image, d.cache).CombinedOutput(); err != nil {
				b.Fatalf("qemu-img compare: %v: %s", err, out)
			}
			return benchRound{d: time.Since(start)}
		}
	}
	b.ResetTimer()
	for range b.N {
		runs := []*benchRun{
			{name: "verify 4 GiB", run: verify(disks[0])},
			{name: "verify 64 GiB", run: verify(disks[1])},
			{name: "qemu-img compare 4 GiB", run: compare(disks[0])},
			{name: "qemu-img compare 64 GiB", run: compare(disks[1])},
		}
		interleave(runs, rounds)
		benchf("%d rounds, interleaved; load average before the report: %s", rounds, loadAverage())
		for _, r := range runs {
			med, least := r.seconds()
			benchf("%-24s median %6.2f s, min %6.2f s", r.name, med, least)
		}
		m4, l4 := runs[0].seconds()
		m64, l64 := runs[1].seconds()
		benchf("verify time 64 GiB / 4 GiB: median %.2f, min %.2f (goal <= 1.2)", m64/m4, l64/l4)
		b.ReportMetric(m4, "verify4-s")
		b.ReportMetric(m64, "verify64-s")
		b.ReportMetric(m64/m4, "verify64/4")
	}
}
