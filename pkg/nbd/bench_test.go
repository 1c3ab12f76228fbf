package nbd

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// BenchmarkReadThroughput reads a 256 MiB raw image served by qemu-nbd
// over a unix socket, 2 MiB requests with 16 in flight, and in every
// iteration also times nbdcopy copying the same export to null:, so both
// see the same load on a shared machine. conns=1 is one connection with
// 16 in flight; conns=4 spreads the 16 over four connections, as the
// server allows multi-conn.
//
// Metrics (medians over the iterations): MB/s (ours), nbdcopy-MB/s
// (nbdcopy's defaults: four connections here, 64 requests of 256 KiB),
// nbdcopy-1conn-MB/s (one connection, 16 requests of 2 MiB, like ours),
// ratio = ours / nbdcopy with its defaults, and the CPU time (user and
// system) each client spent per 256 MiB pass; the server's is the same.
//
//	go test -run '^$' -bench ReadThroughput -benchtime 5x ./pkg/nbd
func BenchmarkReadThroughput(b *testing.B) {
	const (
		size     = 256 * MiB
		reqSize  = 2 * MiB
		inFlight = 16
	)
	requireTools(b, "qemu-nbd", "nbdcopy")
	img := newImage(b, "raw", 0)
	f, err := os.OpenFile(img, os.O_WRONLY, 0)
	if err != nil {
		b.Fatal(err)
	}
	for off := int64(0); off < size; off += 8 * MiB {
		if _, err := f.Write(pattern(off, 8*MiB)); err != nil {
			b.Fatal(err)
		}
	}
	f.Close()
	srv := qemuNBD(b, img, "-f", "raw", "-r", "-e", "8")
	uri := "nbd+unix:///?socket=" + srv.sock
	nbdcopyDefault := []string{uri, "null:"}
	nbdcopyMatched := []string{"--connections=1", fmt.Sprintf("--requests=%d", inFlight),
		fmt.Sprintf("--request-size=%d", reqSize), uri, "null:"}

	for _, conns := range []int{1, 4} {
		b.Run(fmt.Sprintf("conns=%d", conns), func(b *testing.B) {
			clients := make([]*Client, conns)
			for i := range clients {
				clients[i] = dial(b, srv.sock, Options{MaxInFlight: inFlight / conns, Logger: discardLogger()})
			}
			workers := make([]worker, inFlight)
			for i := range workers {
				workers[i] = worker{c: clients[i%conns], buf: make([]byte, reqSize)}
			}
			readAll(b, workers) // warm the page cache, outside the timing
			var ours, def, one, oursCPU, defCPU, oneCPU []time.Duration
			b.SetBytes(size)
			for b.Loop() {
				start, cpu := time.Now(), cpuTime(b)
				readAll(b, workers)
				ours, oursCPU = append(ours, time.Since(start)), append(oursCPU, cpuTime(b)-cpu)
				b.StopTimer()
				wall, cpu := timeCommand(b, "nbdcopy", nbdcopyDefault...)
				def, defCPU = append(def, wall), append(defCPU, cpu)
				wall, cpu = timeCommand(b, "nbdcopy", nbdcopyMatched...)
				one, oneCPU = append(one, wall), append(oneCPU, cpu)
				b.StartTimer()
			}
			mbs := func(d time.Duration) float64 { return size / d.Seconds() / 1e6 }
			ms := func(d time.Duration) float64 { return d.Seconds() * 1e3 }
			b.ReportMetric(mbs(median(ours)), "MB/s")
			b.ReportMetric(mbs(median(def)), "nbdcopy-MB/s")
			b.ReportMetric(mbs(median(one)), "nbdcopy-1conn-MB/s")
			b.ReportMetric(median(def).Seconds()/median(ours).Seconds(), "ratio")
			b.ReportMetric(ms(median(oursCPU)), "cpu-ms/op")
			b.ReportMetric(ms(median(defCPU)), "nbdcopy-cpu-ms/op")
			b.ReportMetric(ms(median(oneCPU)), "nbdcopy-1conn-cpu-ms/op")
		})
	}
}

// worker is one of the requests kept in flight: a client and a buffer.
type worker struct {
	c   *Client
	buf []byte
}

// readAll reads the whole export, each worker taking the next
// request-sized piece until none is left.
func readAll(b *testing.B, workers []worker) {
	ctx := context.Background()
	size := workers[0].c.Size()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, len(workers))
	for i, w := range workers {
		wg.Go(func() {
			n := int64(len(w.buf))
			for off := next.Add(n) - n; off < size; off = next.Add(n) - n {
				if err := w.c.ReadAt(ctx, w.buf[:min(n, size-off)], off); err != nil {
					errs[i] = err
					return
				}
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
}

// timeCommand runs a command and returns its wall and CPU (user and
// system) times.
func timeCommand(b *testing.B, name string, args ...string) (wall, cpu time.Duration) {
	start := time.Now()
	cmd := exec.Command(name, args...)
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("%s: %v\n%s", name, err, out)
	}
	return time.Since(start), cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
}

// cpuTime is the CPU time this process has used so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
