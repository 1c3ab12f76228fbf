package export

import (
	"context"
	"crypto/ed25519"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
	"github.com/ferry-v2v/ferry/agent/internal/runner"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"
)

const (
	benchSize = 1 << 30
	benchData = 256 << 20
)

// benchCache makes the benchmark's cache directory once and keeps it
// under the temporary directory: vda.qcow2, a 1 GiB disk holding 256 MiB
// (64 MiB of one byte, 192 MiB of random bytes in three runs) as
// CONVERTING leaves it by default (zstd-compressed clusters), and the
// source VM.
func benchCache(b *testing.B) string {
	b.Helper()
	dir := filepath.Join(os.TempDir(), "ferry-bench-export-v1")
	ready := filepath.Join(dir, "ready")
	if _, err := os.Stat(ready); err == nil {
		return dir
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		b.Fatal(err)
	}
	raw := filepath.Join(dir, "source.raw")
	f, err := os.Create(raw)
	if err != nil {
		b.Fatal(err)
	}
	if err := f.Truncate(benchSize); err != nil {
		b.Fatal(err)
	}
	rng := rand.NewChaCha8([32]byte{16})
	buf := make([]byte, 4<<20)
	for k, off := range []int64{0, 256 << 20, 512 << 20, 768 << 20} {
		for n := int64(0); n < benchData/4; n += int64(len(buf)) {
			if k == 0 {
				for i := range buf {
					buf[i] = 0x5a
				}
			} else {
				_, _ = rng.Read(buf)
			}
			if _, err := f.WriteAt(buf, off+n); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	testenv.Run(b, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-c", "-o", "compression_type=zstd", raw,
		filepath.Join(dir, "vda."+cache.FormatQcow2))
	if err := os.Remove(raw); err != nil {
		b.Fatal(err)
	}
	vm := &ferryv1.SourceVm{Id: "bench", Name: "bench", Cpus: 1, MemoryBytes: 1 << 30,
		Disks: []*ferryv1.SourceDisk{{Target: "vda", Bus: "virtio", CapacityBytes: benchSize}}}
	if err := cache.SaveSourceVM(dir, vm, nil); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(ready, nil, 0o600); err != nil {
		b.Fatal(err)
	}
	return dir
}

// BenchmarkExport sets Ferry's EXPORTING of one disk from the cache
// (qemu-img convert, beside it the SHA-256 of the disk's whole content
// read from the cache, then qemu-img compare of the file with the cache,
// the manifest signed, the bundle renamed into place) beside a bare
// `qemu-img convert` of the same cache image to the same format, for
// qcow2 and vmdk (streamOptimized). MB/s counts the disk's 1 GiB;
// data-MB/s the 256 MiB it holds. The SHA-256 the manifest gives of the
// content as a guest reads it must hash every byte, zeroes too: it
// bounds a qcow2 export, which qemu-img alone makes by copying the
// allocated clusters; a vmdk export's deflate takes longer than the hash.
func BenchmarkExport(b *testing.B) {
	dir := benchCache(b)
	for _, f := range []struct {
		name   string
		format ferryv1.ExportFormat
	}{{"qcow2", ferryv1.ExportFormat_EXPORT_FORMAT_QCOW2}, {"vmdk", ferryv1.ExportFormat_EXPORT_FORMAT_VMDK}} {
		b.Run(f.name+"/ferry", func(b *testing.B) {
			dest := b.TempDir()
			pub, key, _ := ed25519.GenerateKey(nil)
			d := New(Options{Signer: &keySigner{pub: pub, key: key}})
			var took time.Duration
			defer func() { report(b, took) }()
			for i := 0; i < b.N; i++ {
				e := &ferryv1.ExportSpec{Format: f.format, BundleName: "bench-" + time.Now().Format("150405.000000000"),
					Destination: &ferryv1.ExportDestination{Type: ferryv1.ExportDestinationType_EXPORT_DESTINATION_TYPE_DIRECTORY, Path: dest}}
				job := &runner.Job{CacheDir: dir, Log: slog.New(slog.DiscardHandler), Assignment: &agentv1.Assignment{Epoch: 1,
					Source: &ferryv1.Source{Name: "sources/bench", Type: ferryv1.Platform_PLATFORM_KVM},
					Job: &ferryv1.MigrationJob{Name: "migrationJobs/bench", Export: e,
						Target: &ferryv1.TargetVm{Disks: []*ferryv1.TargetDisk{{SourceDisk: "vda", SizeBytes: benchSize}}}}}}
				start := time.Now()
				if err := d.Export(context.Background(), job); err != nil {
					b.Fatal(err)
				}
				took += time.Since(start)
				b.StopTimer()
				_ = os.RemoveAll(filepath.Join(dest, e.GetBundleName()))
				b.StartTimer()
			}
		})
		b.Run(f.name+"/qemu-img", func(b *testing.B) {
			dest := b.TempDir()
			_, args := formatOf(f.format, false)
			var took time.Duration
			defer func() { report(b, took) }()
			for i := 0; i < b.N; i++ {
				out := filepath.Join(dest, "out."+f.name)
				argv := append(append([]string{"convert", "-f", "qcow2"}, args...), filepath.Join(dir, "vda.qcow2"), out)
				start := time.Now()
				testenv.Run(b, "qemu-img", argv...)
				took += time.Since(start)
				b.StopTimer()
				_ = os.Remove(out)
				b.StartTimer()
			}
		})
	}
}

// report sets the throughput of b.N exports that took d in all.
func report(b *testing.B, d time.Duration) {
	b.SetBytes(benchSize)
	if d > 0 {
		b.ReportMetric(float64(benchData)*float64(b.N)/1e6/d.Seconds(), "data-MB/s")
	}
}
