package e2e

import (
	"bytes"
	"os"
	"testing"
	"time"

	"libvirt.org/go/libvirtxml"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"
)

// TestMigrateUEFIVM: a UEFI source stays UEFI on the target, with its
// NVRAM copied, and CD-ROM drives as many as the source has.
func TestMigrateUEFIVM(t *testing.T) {
	t.Parallel() // see doc.go
	w := newWorld(t)
	src := testenv.NewTestVM(t, w.lv, testenv.VMOptions{UEFI: true, CDROMs: 2})
	vm := w.sourceVM(w.source, src.Name)
	if vm.GetFirmware() != ferryv1.Firmware_FIRMWARE_UEFI || vm.GetCdromCount() != 2 {
		t.Fatalf("source described as firmware %s with %d CD-ROMs", vm.GetFirmware(), vm.GetCdromCount())
	}
	// Paused, so that the firmware cannot write its variables after the
	// copy (OVMF does while it boots) and the NVRAM compares exactly.
	spec := w.spec(vm, &ferryv1.MigrationOptions{PauseSourceVm: true})
	name := w.createJob(spec)
	j := w.waitJob(name, 3*time.Minute, "the job to end", terminal)
	if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
		t.Fatalf("job ended %s: %s", j.GetState(), j.GetReason())
	}
	for _, d := range src.Disks {
		compare(t, d.Path, w.volume(name, d.Target))
	}
	var dom libvirtxml.Domain
	must(t, dom.Unmarshal(w.lv.Virsh(t, "dumpxml", spec.GetTarget().GetVmName())))
	if dom.OS == nil || dom.OS.Loader == nil && dom.OS.Firmware != "efi" {
		t.Fatalf("target OS section %+v has no UEFI loader", dom.OS)
	}
	if dom.OS.NVRam == nil || dom.OS.NVRam.NVRam == "" {
		t.Fatalf("target has no NVRAM: %+v", dom.OS)
	}
	copied, err := os.ReadFile(dom.OS.NVRam.NVRam)
	must(t, err)
	cached, err := os.ReadFile(w.cacheDir + "/" + jobID(name) + "/nvram.fd")
	must(t, err)
	if !bytes.Equal(copied, cached) || len(copied) == 0 {
		t.Errorf("target NVRAM (%d bytes) is not the source's as copied (%d bytes)", len(copied), len(cached))
	}
	original, err := os.ReadFile(src.NVRAM)
	must(t, err)
	if !bytes.Equal(cached, original) {
		t.Errorf("the NVRAM copied (%d bytes) differs from the source's %s (%d bytes)", len(cached), src.NVRAM, len(original))
	}
	cdroms := 0
	for _, d := range dom.Devices.Disks {
		if d.Device == "cdrom" {
			cdroms++
		}
	}
	if cdroms != 2 {
		t.Errorf("target has %d CD-ROMs, want 2", cdroms)
	}
}

func jobID(name string) string { return name[len("migrationJobs/"):] }
