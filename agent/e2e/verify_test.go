package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// TestCorruptionFailsVerification: one byte of the root disk is flipped
// in the target volume right after the upload wrote it, as a failing
// target disk would. (The upload writes the chunks from the copy's own
// buffers, so a byte flipped in the cache after the copy no longer
// reaches the target.) The upstream limit is half the downstream one, so
// the upload lags the copy and reads the volume back only when it has
// caught up, after the flip; the read-back finds it, and the job FAILS
// naming the disk and the offset of the chunk; no target VM is defined and
// the volumes are removed.
func TestCorruptionFailsVerification(t *testing.T) {
	t.Parallel() // see doc.go
	w := newWorld(t)
	src := testenv.NewTestVM(t, w.lv, testenv.VMOptions{RandomBytes: 16 << 20})
	w.setBandwidth(proto.String(fourMiBps), proto.String(eightMiBps)) // a few seconds of upload to act in
	spec := w.spec(w.sourceVM(w.source, src.Name), &ferryv1.MigrationOptions{Compression: ferryv1.Compression_COMPRESSION_NONE})
	name := w.createJob(spec)

	const at = testenv.RandomOffset + 3<<20 + 99 // in the random data of vda
	const chunk = at / (2 << 20) * (2 << 20)
	want := src.Disks[0].Random[at-testenv.RandomOffset]
	volume := w.volume(name, "vda")
	testkit.WaitFor(t, 2*time.Minute, fmt.Sprintf("byte %d of vda on the target volume", at), func() bool {
		host, ok := hostOffset(volume, at)
		if !ok {
			return false
		}
		f, err := os.OpenFile(volume, os.O_RDWR, 0)
		if err != nil {
			return false
		}
		defer f.Close()
		b := make([]byte, 1)
		if _, err := f.ReadAt(b, host); err != nil || b[0] != want {
			return false
		}
		b[0] ^= 0xff
		if _, err := f.WriteAt(b, host); err != nil {
			t.Fatal(err)
		}
		return true
	})

	j := w.waitJob(name, 3*time.Minute, "the job to end", terminal)
	wantReason := fmt.Sprintf("verify the target disks against the source: disk vda: volume %s: the %d bytes at offset %d differ from the source",
		w.volume(name, "vda"), 2<<20, chunk)
	if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED || !strings.HasPrefix(j.GetReason(), wantReason) {
		t.Fatalf("job ended %s: %q; want FAILED starting with %q", j.GetState(), j.GetReason(), wantReason)
	}
	if j.GetVerified() {
		t.Error("a job that failed verification says verified")
	}
	if out, err := w.lv.TryVirsh("dominfo", spec.GetTarget().GetVmName()); err == nil {
		t.Errorf("target VM %s was defined: %s", spec.GetTarget().GetVmName(), out)
	}
	if _, err := os.Stat(w.volume(name, "vda")); !os.IsNotExist(err) {
		t.Errorf("the target volume of vda is still there: %v", err)
	}
	t.Logf("flipped byte %d of vda on the target volume; the job failed: %s", at, j.GetReason())
}

// hostOffset is where in the qcow2 file path the byte at guest offset off
// is stored, once it is allocated (qemu-img map, sharing the image with
// the qemu-nbd writing it).
func hostOffset(path string, off int64) (int64, bool) {
	out, err := exec.Command("qemu-img", "map", "-U", "-f", "qcow2", "--output=json", path).Output()
	if err != nil {
		return 0, false
	}
	var m []struct {
		Start, Length int64
		Data          bool
		Offset        *int64
	}
	if json.Unmarshal(out, &m) != nil {
		return 0, false
	}
	for _, e := range m {
		if off >= e.Start && off < e.Start+e.Length {
			if !e.Data || e.Offset == nil {
				return 0, false
			}
			return *e.Offset + off - e.Start, true
		}
	}
	return 0, false
}
