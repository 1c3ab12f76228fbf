package target

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
	"github.com/ferry-v2v/ferry/agent/internal/pipeline"
	"github.com/ferry-v2v/ferry/pkg/nbd"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"

	"github.com/ferry-v2v/ferry/pkg/ratelimit"
	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// TestVerifyVolume runs the real path: a source image holding data, holes
// and a zeroed range, over NBD, copied into a cache image with a
// checkpoint (CONVERTING), uploaded onto a local qcow2 volume (UPLOADING),
// then read back and compared. The volume equals the source byte for byte
// (qemu-img compare), and verification passes reading the data only,
// reporting every byte checked. Then each way a volume can differ is
// made on a copy of it, and verification names the chunk: a byte flipped
// in a data range, a byte written where the source had a hole, and a data
// range zeroed (which the volume then reports as zeroes, never read).
func TestVerifyVolume(t *testing.T) {
	requireTools(t, "qemu-img", "qemu-nbd", "qemu-io")
	ctx := context.Background()
	img, srcEp := sourceImage(t)
	sc, err := nbd.Dial(ctx, "unix", srcEp.Socket, nbd.Options{Logger: testkit.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	cacheDir := shortTempDir(t)
	cimg, err := cache.Open(ctx, cacheDir, "vda", sc.Size(), false, testkit.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	cp, err := pipeline.LoadCheckpoint(cimg.CheckpointPath(), sc.Size(), pipeline.DefaultChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pipeline.Copy(ctx, pipeline.NBDSource{Client: sc}, cimg, pipeline.Options{Checkpoint: cp, Logger: testkit.Logger(t)}); err != nil {
		t.Fatal(err)
	}
	if err := cimg.Close(); err != nil {
		t.Fatal(err)
	}

	exp, err := cache.OpenExport(ctx, cacheDir, "vda", testkit.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	vol, err := NameVolume(storage(ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_LOCAL, t.TempDir(), "", ""), "migrationJobs/j1", "vda", sourceSize)
	if err != nil {
		t.Fatal(err)
	}
	up := NewUploader(UploadDeps{Log: testkit.Logger(t)})
	if err := up.Upload(ctx, Endpoint{Socket: exp.Socket()}, vol, nil); err != nil {
		t.Fatal(err)
	}
	if err := exp.Close(); err != nil {
		t.Fatal(err)
	}
	run(t, "qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", img, vol.Path)

	cp, err = pipeline.OpenCheckpoint(cache.CheckpointPath(cacheDir, "vda"))
	if err != nil {
		t.Fatal(err)
	}
	var done, total atomic.Int64
	st, err := VerifyVolume(ctx, up, cp, vol, pipeline.VerifyOptions{Progress: func(d, tot int64) { done.Store(d); total.Store(tot) }})
	if err != nil {
		t.Fatalf("verify the uploaded volume: %v", err)
	}
	if st.ReadBytes != dataBytes || st.ZeroBytes != sourceSize-dataBytes {
		t.Errorf("verification read %d bytes and took %d as zeroes, the volume holds %d of data in %d", st.ReadBytes, st.ZeroBytes, dataBytes, sourceSize)
	}
	if done.Load() != sourceSize || total.Load() != sourceSize {
		t.Errorf("verification progress ended at %d of %d, want %d of %d", done.Load(), total.Load(), sourceSize, sourceSize)
	}

	// Under the upstream limit every byte read back takes a token, and
	// ranges checked by their status none.
	lim := ratelimit.New(8 << 30)
	if st, err = VerifyVolume(ctx, up, cp, vol, pipeline.VerifyOptions{Limiter: lim}); err != nil {
		t.Fatalf("verify under a limit: %v", err)
	}
	if got := lim.Granted(); got != st.ReadBytes || got != dataBytes {
		t.Errorf("the limiter granted %d bytes to a verification that read %d (the volume holds %d of data)", got, st.ReadBytes, dataBytes)
	}

	for _, tc := range []struct {
		name    string
		corrupt func(t testing.TB, path string)
		chunk   int64
		detail  string
	}{
		{"byte flipped in data", func(t testing.TB, p string) { flipByte(t, p, 2<<20+777) }, 2 << 20, "xxHash64"},
		{"byte written in a hole", func(t testing.TB, p string) {
			run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x01 10485765 1", p)
		}, 10 << 20, "the source read as zeroes, the target has data at offset 10485765"},
		{"data range zeroed", func(t testing.TB, p string) {
			// A whole cluster (2 MiB), which qcow2 then marks as zeroes.
			run(t, "qemu-io", "-f", "qcow2", "-c", "write -z 20M 2M", p)
		}, 20 << 20, "the target reads as zeroes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := vol
			bad.Path = filepath.Join(t.TempDir(), "bad.qcow2")
			run(t, "cp", "--sparse=always", vol.Path, bad.Path)
			tc.corrupt(t, bad.Path)
			_, err := VerifyVolume(ctx, up, cp, bad, pipeline.VerifyOptions{})
			var mm *pipeline.MismatchError
			want := fmt.Sprintf("the 2097152 bytes at offset %d differ from the source", tc.chunk)
			if !errors.As(err, &mm) || mm.Offset != tc.chunk || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), tc.detail) {
				t.Fatalf("verify = %v, want a mismatch %q with %q", err, want, tc.detail)
			}
		})
	}
}

// flipByte inverts the byte at guest offset off of a qcow2 file, found
// through qemu-img map.
func flipByte(t testing.TB, image string, off int64) {
	t.Helper()
	var m []struct {
		Start, Length, Offset int64
		Data                  bool
	}
	if err := json.Unmarshal([]byte(run(t, "qemu-img", "map", "--output=json", image)), &m); err != nil {
		t.Fatal(err)
	}
	for _, e := range m {
		if e.Data && e.Start <= off && off < e.Start+e.Length {
			f, err := os.OpenFile(image, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			b := make([]byte, 1)
			host := e.Offset + off - e.Start
			if _, err := f.ReadAt(b, host); err != nil {
				t.Fatal(err)
			}
			b[0] ^= 0xff
			if _, err := f.WriteAt(b, host); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
	t.Fatalf("offset %d of %s is not allocated: %+v", off, image, m)
}
