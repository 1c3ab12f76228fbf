package vmdk

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/pkg/ratelimit"
)

// fileSink writes to a raw file.
type fileSink struct{ f *os.File }

func (s fileSink) WriteAt(_ context.Context, p []byte, off int64) error {
	_, err := s.f.WriteAt(p, off)
	return err
}

func (s fileSink) Flush(context.Context) error { return s.f.Sync() }

// streams are the stream layouts of the test image, by name.
func streams(t *testing.T, img *testImage) map[string]string {
	t.Helper()
	s := map[string]string{
		"qemuStreamOptimized":  img.vmdk(t, "streamOptimized"),
		"qemuMonolithicSparse": img.vmdk(t, "monolithicSparse"),
	}
	for name, spec := range map[string]streamSpec{"vmware": {}, "vmwareGrain4k": {grainSectors: 8}} {
		s[name] = filepath.Join(img.dir, name+".vmdk")
		if err := os.WriteFile(s[name], makeStream(img.want(), spec), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func TestCopyStream(t *testing.T) {
	const size = 5<<20 + 3*512 + 100
	regions := standardRegions(size)
	img := newTestImage(t, size, regions)
	for name, path := range streams(t, img) {
		for _, workers := range []int{1, 3} {
			t.Run(name, func(t *testing.T) {
				sr, err := OpenStream(openFile(t, path))
				if err != nil {
					t.Fatal(err)
				}
				out := filepath.Join(t.TempDir(), "decoded.raw")
				f, err := os.Create(out)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				if err := f.Truncate(sr.Capacity()); err != nil {
					t.Fatal(err)
				}
				var last [2]int64
				st, err := CopyStream(context.Background(), sr, fileSink{f}, CopyOptions{
					Workers:  workers,
					Progress: func(done, total int64) { last = [2]int64{done, total} },
				})
				if err != nil {
					t.Fatal(err)
				}
				got, _ := os.ReadFile(out)
				checkEqual(t, got, img.want())
				qemuCompare(t, "vmdk", path, "raw", out)
				if last != [2]int64{sr.Capacity(), sr.Capacity()} || st.DataBytes == 0 || st.StreamBytes == 0 {
					t.Fatalf("progress %v, stats %+v", last, st)
				}
			})
		}
	}
}

// TestCopyStreamGranules: writes cover whole granules, never a zero region,
// and are flushed.
func TestCopyStreamGranules(t *testing.T) {
	const size = 5<<20 + 3*512 + 100
	regions := standardRegions(size)
	img := newTestImage(t, size, regions)
	for _, align := range []int64{4096, DefaultAlign, 1 << 20} {
		sr, err := OpenStream(bytes.NewReader(makeStream(img.want(), streamSpec{grainSectors: 8})))
		if err != nil {
			t.Fatal(err)
		}
		sink := &memSink{buf: make([]byte, sr.Capacity())}
		if _, err := CopyStream(context.Background(), sr, sink, CopyOptions{Align: align, Workers: 2}); err != nil {
			t.Fatal(err)
		}
		checkEqual(t, sink.buf, img.want())
		if sink.flush != 1 {
			t.Fatalf("%d flushes", sink.flush)
		}
		for _, w := range sink.writes {
			end := w.Offset + w.Length
			if w.Offset%align != 0 || (end%align != 0 && end != sr.Capacity()) {
				t.Fatalf("align %d: write %+v", align, w)
			}
		}
		if align <= DefaultAlign {
			checkExtents(t, sink.writes, img.want(), align, regions)
		}
	}
}

type failSink struct{ err error }

func (s failSink) WriteAt(context.Context, []byte, int64) error { return s.err }
func (s failSink) Flush(context.Context) error                  { return nil }

func TestCopyStreamErrors(t *testing.T) {
	const size = 5 << 20
	img := newTestImage(t, size, standardRegions(size))
	stream := makeStream(img.want(), streamSpec{})
	open := func() *StreamReader {
		sr, err := OpenStream(bytes.NewReader(stream))
		if err != nil {
			t.Fatal(err)
		}
		return sr
	}
	boom := errors.New("disk full")
	if _, err := CopyStream(context.Background(), open(), failSink{boom}, CopyOptions{}); !errors.Is(err, boom) {
		t.Fatalf("sink error: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := CopyStream(ctx, open(), failSink{}, CopyOptions{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
	if _, err := CopyStream(context.Background(), open(), failSink{}, CopyOptions{Align: 1000}); err == nil {
		t.Fatal("granule of 1000 accepted")
	}
	trunc, err := OpenStream(bytes.NewReader(stream[:len(stream)-3000]))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := CopyStream(context.Background(), trunc, failSink{}, CopyOptions{}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("truncated: %v", err)
	}
}

// TestCopyStreamLimiter: every byte of the stream takes a token.
func TestCopyStreamLimiter(t *testing.T) {
	const size = 5 << 20
	img := newTestImage(t, size, []region{{1 << 20, 2 << 20, "random"}})
	stream := makeStream(img.want(), streamSpec{})
	sr, err := OpenStream(bytes.NewReader(stream))
	if err != nil {
		t.Fatal(err)
	}
	const rate = 8 << 20 // bytes per second
	start := time.Now()
	sink := &memSink{buf: make([]byte, sr.Capacity())}
	lim := ratelimit.New(8 * rate)
	st, err := CopyStream(context.Background(), sr, sink, CopyOptions{Limiter: lim})
	if err != nil {
		t.Fatal(err)
	}
	min := time.Duration(float64(st.StreamBytes-int64(lim.Burst())) / rate * float64(time.Second))
	t.Logf("%d stream bytes in %v", st.StreamBytes, time.Since(start))
	if el := time.Since(start); el < min {
		t.Fatalf("%d stream bytes in %v at %d B/s: want at least %v", st.StreamBytes, el, rate, min)
	}
	checkEqual(t, sink.buf, img.want())
}
