package e2e

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// TestCorruptionFailsVerification: one byte of the root disk is flipped
// in the (raw) cache image right after CONVERTING copied and checksummed
// it, as a failing cache disk would. The upload carries the bad byte to
// the target, the read-back finds it, and the job FAILS naming the disk
// and the offset of the chunk; no target VM is defined and the volumes
// are removed.
func TestCorruptionFailsVerification(t *testing.T) {
	w := newWorld(t)
	src := testenv.NewTestVM(t, w.lv, testenv.VMOptions{RandomBytes: 16 << 20})
	w.setBandwidth(nil, proto.String(eightMiBps)) // a few seconds of CONVERTING to act in
	spec := w.spec(w.sourceVM(w.source, src.Name), &ferryv1.MigrationOptions{Compression: ferryv1.Compression_COMPRESSION_NONE})
	name := w.createJob(spec)

	const at = testenv.RandomOffset + 3<<20 + 99 // in the random data of vda
	const chunk = at / (2 << 20) * (2 << 20)
	want := src.Disks[0].Random[at-testenv.RandomOffset]
	cacheImage := filepath.Join(w.cacheDir, path.Base(name), "vda.raw")
	testkit.WaitFor(t, 2*time.Minute, fmt.Sprintf("byte %d of vda in the cache", at), func() bool {
		f, err := os.OpenFile(cacheImage, os.O_RDWR, 0)
		if err != nil {
			return false
		}
		defer f.Close()
		b := make([]byte, 1)
		if _, err := f.ReadAt(b, at); err != nil || b[0] != want {
			return false
		}
		b[0] ^= 0xff
		if _, err := f.WriteAt(b, at); err != nil {
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
	t.Logf("flipped byte %d of vda in the cache; the job failed: %s", at, j.GetReason())
}
