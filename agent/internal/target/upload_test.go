package target

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/ratelimit"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

const sourceSize = 48 << 20

// sourceImage writes a qcow2 "cache image" with data, a zeroed range and
// holes, and serves it read-only over NBD.
func sourceImage(t *testing.T) (string, Endpoint) {
	t.Helper()
	img := filepath.Join(t.TempDir(), "cache.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "48M")
	run(t, "qemu-io", "-f", "qcow2",
		"-c", "write -P 0xab 1M 3M",
		"-c", "write -P 0xcd 20M 512k",
		"-c", "write -z 30M 1M",
		"-c", "write -P 0xef 47M 1M", img)
	return img, serveImage(t, img, "qcow2")
}

// dataBytes is what sourceImage holds: 3 MiB + 512 KiB + 1 MiB.
const dataBytes = 4<<20 + 512<<10

func TestUploadLocal(t *testing.T) {
	requireTools(t, "qemu-img", "qemu-nbd", "qemu-io")
	img, src := sourceImage(t)
	for _, typ := range []ferryv1.PrimaryStorageType{
		ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_LOCAL, ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_NFS,
	} {
		t.Run(typ.String(), func(t *testing.T) {
			vol, err := NameVolume(storage(typ, t.TempDir(), "", ""), "migrationJobs/j1", "vda", sourceSize)
			if err != nil {
				t.Fatal(err)
			}
			u := NewUploader(UploadDeps{Copier: &NBDCopier{Limiter: ratelimit.New(0), Log: testkit.Logger(t)}, Log: testkit.Logger(t)})
			var done, total atomic.Int64
			err = u.Upload(context.Background(), src, vol, func(d, tot int64) { done.Store(d); total.Store(tot) })
			if err != nil {
				t.Fatal(err)
			}
			run(t, "qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", img, vol.Path)
			// Only the data travelled: holes and the zeroed MiB did not.
			if done.Load() != dataBytes || total.Load() != dataBytes {
				t.Errorf("progress %d of %d, want %d of %d", done.Load(), total.Load(), dataBytes, dataBytes)
			}
			if out := run(t, "qemu-img", "info", vol.Path); !strings.Contains(out, "file format: qcow2") {
				t.Errorf("volume is not qcow2:\n%s", out)
			}
		})
	}
}

// Shared block storage: the LV is a loop device full of garbage, so the
// source's holes must be written as zeroes; lvcreate itself is faked.
func TestUploadRawBlockDevice(t *testing.T) {
	requireTools(t, "qemu-img", "qemu-nbd", "qemu-io", "losetup")
	img, src := sourceImage(t)
	backing := filepath.Join(t.TempDir(), "lv.img")
	garbage := make([]byte, sourceSize+4<<20) // an LV rounded up to its extents
	for i := range garbage {
		garbage[i] = byte(i*7 + 1)
	}
	if err := os.WriteFile(backing, garbage, 0o600); err != nil {
		t.Fatal(err)
	}
	dev := run(t, "losetup", "-f", "--show", backing)
	t.Cleanup(func() { run(t, "losetup", "-d", dev) })

	vol, err := NameVolume(storage(ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_SHAREDBLOCK, "", "", "vg0"), "j1", "vdb", sourceSize)
	if err != nil {
		t.Fatal(err)
	}
	vol.Path = dev // what /dev/vg0/ferry-j1-vdb would be
	r := &fakeCommander{}
	u := NewUploader(UploadDeps{Commander: r, Log: testkit.Logger(t)})
	if err := u.Upload(context.Background(), src, vol, nil); err != nil {
		t.Fatal(err)
	}
	if want := [][]string{{"lvcreate", "-y", "-L", "50331648b", "-n", "ferry-j1-vdb", "vg0"}}; !reflect.DeepEqual(r.commands(), want) {
		t.Errorf("commands = %q", r.commands())
	}
	run(t, "qemu-img", "compare", "-f", "qcow2", "-F", "raw", img, dev)
}

// The upstream limit applies to the upload: 4.5 MiB of data at 8 MiB/s,
// less the bucket's first burst, take about 0.5 s.
func TestUploadHonoursLimit(t *testing.T) {
	requireTools(t, "qemu-img", "qemu-nbd", "qemu-io")
	img, src := sourceImage(t)
	vol, err := NameVolume(storage(ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_LOCAL, t.TempDir(), "", ""), "j1", "vda", sourceSize)
	if err != nil {
		t.Fatal(err)
	}
	u := NewUploader(UploadDeps{Copier: &NBDCopier{Limiter: ratelimit.New(8 << 20 * 8)}})
	start := time.Now()
	if err := u.Upload(context.Background(), src, vol, nil); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 450*time.Millisecond {
		t.Errorf("upload took %s, want at least 0.45 s at 8 MiB/s", d)
	}
	run(t, "qemu-img", "compare", img, vol.Path)
}

// A cancelled upload stops qemu-img and qemu-nbd and returns the cause.
func TestUploadCancelled(t *testing.T) {
	requireTools(t, "qemu-img", "qemu-nbd", "qemu-io")
	_, src := sourceImage(t)
	vol, err := NameVolume(storage(ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_LOCAL, t.TempDir(), "", ""), "j1", "vda", sourceSize)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	u := NewUploader(UploadDeps{Copier: &NBDCopier{Limiter: ratelimit.New(1 << 20 * 8)}})
	start := time.Now()
	err = u.Upload(ctx, src, vol, nil)
	if err == nil || !strings.Contains(err.Error(), "context canceled") {
		t.Errorf("Upload = %v, want context canceled", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("cancel took %s", d)
	}
}

// TestUploadFenced: a fence that refuses the creation leaves no volume; one
// that refuses the data write leaves the empty volume (Rollback removes it)
// with nothing of the source on it. Writes are asked for in order.
func TestUploadFenced(t *testing.T) {
	requireTools(t, "qemu-img", "qemu-nbd", "qemu-io")
	_, src := sourceImage(t)
	for _, refuse := range []string{"create volume", "upload onto volume"} {
		t.Run(refuse, func(t *testing.T) {
			vol, err := NameVolume(storage(ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_LOCAL, t.TempDir(), "", ""), "migrationJobs/j1", "vda", sourceSize)
			if err != nil {
				t.Fatal(err)
			}
			var asked []string
			fence := func(_ context.Context, write string) error {
				asked = append(asked, write)
				if strings.HasPrefix(write, refuse) {
					return errors.New("stale assignment")
				}
				return nil
			}
			u := NewUploader(UploadDeps{Copier: &NBDCopier{Limiter: ratelimit.New(0), Log: testkit.Logger(t)}, Log: testkit.Logger(t), Fence: fence})
			err = u.Upload(context.Background(), src, vol, nil)
			if err == nil || !strings.Contains(err.Error(), "stale assignment") {
				t.Fatalf("Upload = %v, want the fence's refusal", err)
			}
			want := []string{"create volume " + vol.Path, "upload onto volume " + vol.Path}
			if refuse == "create volume" {
				want = want[:1]
			}
			if !reflect.DeepEqual(asked, want) {
				t.Errorf("fence asked %q, want %q", asked, want)
			}
			_, statErr := os.Stat(vol.Path)
			switch refuse {
			case "create volume":
				if !os.IsNotExist(statErr) {
					t.Errorf("volume %s exists after a refused creation (%v)", vol.Path, statErr)
				}
			default:
				// Its metadata is preallocated: every range is "data", and
				// reads as zeroes until written.
				if out := run(t, "qemu-img", "map", "--output=json", vol.Path); strings.Contains(out, `"zero": false`) {
					t.Errorf("data written to the volume after a refused upload: %s", out)
				}
			}
		})
	}
}
