package target

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
	"github.com/ferry-v2v/ferry/agent/internal/pipeline"
	"github.com/ferry-v2v/ferry/pkg/nbd"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// TestVerifyVolume runs the real path: a source image over NBD copied into
// a cache image with a checkpoint (CONVERTING), uploaded onto a local qcow2
// volume (UPLOADING), then read back and compared. It passes, reading the
// data only; then one byte of the uploaded file is flipped, as a bad disk
// or a buggy writer would, and verification names the chunk holding it.
func TestVerifyVolume(t *testing.T) {
	requireTools(t, "qemu-img", "qemu-nbd", "qemu-io")
	ctx := context.Background()
	_, srcEp := sourceImage(t)
	sc, err := nbd.Dial(ctx, "unix", srcEp.Socket, nbd.Options{Logger: testkit.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	cacheDir := shortTempDir(t)
	img, err := cache.Open(ctx, cacheDir, "vda", sc.Size(), false, testkit.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	cp, err := pipeline.LoadCheckpoint(img.CheckpointPath(), sc.Size(), pipeline.DefaultChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pipeline.Copy(ctx, pipeline.NBDSource{Client: sc}, img, pipeline.Options{Checkpoint: cp, Logger: testkit.Logger(t)}); err != nil {
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}

	exp, err := cache.OpenExport(ctx, cacheDir, "vda", testkit.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	vol, err := Plan(storage(ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_LOCAL, t.TempDir(), "", ""), "migrationJobs/j1", "vda", sourceSize)
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

	cp, err = pipeline.OpenCheckpoint(cache.CheckpointPath(cacheDir, "vda"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := VerifyVolume(ctx, up, cp, vol, nil)
	if err != nil {
		t.Fatalf("verify the uploaded volume: %v", err)
	}
	if st.ReadBytes != dataBytes {
		t.Errorf("verification read %d bytes, the volume holds %d of data", st.ReadBytes, dataBytes)
	}

	const flipAt = 2<<20 + 777 // inside the 0xab data
	flipByte(t, vol.Path, flipAt)
	_, err = VerifyVolume(ctx, up, cp, vol, nil)
	var mm *pipeline.MismatchError
	if !errors.As(err, &mm) || mm.Offset != 2<<20 || !strings.Contains(err.Error(), "the 2097152 bytes at offset 2097152 differ from the source") {
		t.Fatalf("verify a volume with a byte flipped at %d = %v, want a mismatch at offset 2097152", flipAt, err)
	}
}

// flipByte inverts the byte at guest offset off of a qcow2 file, found
// through qemu-img map.
func flipByte(t *testing.T, image string, off int64) {
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
