package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"libvirt.org/go/libvirtxml"

	"github.com/ferry-v2v/ferry/agent/internal/source/vmware/vcsimtest"
	"github.com/ferry-v2v/ferry/pkg/bundle"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"
)

// TestExportBundle exports a running KVM VM with two disks as a qcow2
// bundle and as a vmdk (streamOptimized) bundle through ferryctl: each
// disk file equals the source disk (qemu-img compare), the manifest's
// SHA-256 of each disk equals sha256sum of `qemu-img convert -O raw` of
// it, and `ferryctl bundle verify` passes with the cluster's key. A
// bundle with one disk byte or one manifest field changed is refused
// naming the file; an export cancelled while it writes leaves nothing at
// the destination.
func TestExportBundle(t *testing.T) {
	t.Parallel() // see doc.go
	start := time.Now()
	w := newWorld(t)
	src := testenv.NewTestVM(t, w.lv, testenv.VMOptions{RandomBytes: 4 << 20})
	vm := w.sourceVM(w.source, src.Name)
	if len(vm.GetDisks()) != 2 {
		t.Fatalf("ListSourceVMs described %s with %d disks, want 2", src.Name, len(vm.GetDisks()))
	}
	dest := t.TempDir()
	keyOut, err := w.f.ferryctl("bundle", "key", "-o", "json")
	must(t, err)
	var key ferryv1.BundleSigningKey
	must(t, protojson.Unmarshal([]byte(keyOut), &key))

	bundles := map[string]string{}
	for _, format := range []string{"", "vmdk"} {
		ext := map[string]string{"": "qcow2", "vmdk": "vmdk"}[format]
		t.Run(ext, func(t *testing.T) {
			args := []string{"export", "create", "--source", w.source, "--migration-server", w.server, "--vm", src.Name,
				"--dir", dest, "--bundle-name", src.Name + "-" + ext, "-o", "json"}
			if format != "" {
				args = append(args, "--format", format)
			}
			name := w.createExportCLI(args...)
			job := w.waitJob(name, 3*time.Minute, "the export to end", terminal)
			if job.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
				t.Fatalf("export ended %s: %s", job.GetState(), job.GetReason())
			}
			checkExportPhases(t, job)
			dir := filepath.Join(dest, src.Name+"-"+ext)
			bundles[ext] = dir
			m, _, err := bundle.Read(dir, nil)
			must(t, err)
			if len(m.Disks) != 2 || m.Source.Name != w.source || m.Source.VM != src.Name {
				t.Fatalf("manifest disks %d, source %+v", len(m.Disks), m.Source)
			}
			for i, d := range src.Disks {
				md := m.Disks[i]
				file := filepath.Join(dir, md.File)
				if md.SourceDisk != d.Target || md.Format != ext || md.SizeBytes != d.Size || md.Order != i || md.Boot != (i == 0) {
					t.Errorf("manifest disk %d = %+v, want %s, %s, %d bytes", i, md, d.Target, ext, d.Size)
				}
				compare(t, d.Path, file)
				if ext == "vmdk" {
					if info := testenv.Run(t, "qemu-img", "info", file); !strings.Contains(info, "create type: streamOptimized") {
						t.Errorf("%s is not streamOptimized:\n%s", file, info)
					}
				}
				if got := rawSHA256(t, file); got != md.SHA256 {
					t.Errorf("%s: sha256sum of qemu-img convert -O raw = %s, manifest %s", file, got, md.SHA256)
				}
			}
			var tgt ferryv1.TargetVm
			must(t, protojson.Unmarshal(m.Target, &tgt))
			if tgt.GetVmName() != src.Name || tgt.GetCpus() != 1 || tgt.GetMemoryBytes() != 64<<20 || len(tgt.GetNics()) != 1 ||
				tgt.GetNics()[0].GetMac() != src.MACs[0] || len(tgt.GetDisks()) != 2 || !tgt.GetDisks()[0].GetBoot() {
				t.Errorf("manifest target = %v", &tgt)
			}
			out, err := w.f.ferryctl("bundle", "verify", dir, "--public-key", key.GetPublicKey())
			if err != nil || !strings.Contains(out, "verified: signed by key "+key.GetKeyId()+", the expected key") {
				t.Errorf("bundle verify: %v: %s", err, out)
			}
			if left, _ := filepath.Glob(filepath.Join(dest, ".*")); len(left) != 0 {
				t.Errorf("partial bundles left: %v", left)
			}
		})
	}
	t.Run("tampered", func(t *testing.T) {
		dir := bundles["vmdk"]
		if dir == "" {
			t.Skip("no vmdk bundle")
		}
		tamperedCopy := func(t *testing.T) string {
			out := filepath.Join(t.TempDir(), "b")
			testenv.Run(t, "cp", "-a", dir, out)
			return out
		}
		// One field of the manifest.
		b1 := tamperedCopy(t)
		mf := filepath.Join(b1, bundle.ManifestFile)
		raw, err := os.ReadFile(mf)
		must(t, err)
		changed := strings.Replace(string(raw), `"memoryBytes": "67108864"`, `"memoryBytes": "134217728"`, 1)
		if changed == string(raw) {
			t.Fatalf("no memoryBytes in %s", raw)
		}
		must(t, os.WriteFile(mf, []byte(changed), 0o644))
		out, err := w.f.ferryctl("bundle", "verify", b1)
		if err == nil || !strings.Contains(out, mf+": signature of key") {
			t.Errorf("verify of a changed manifest: %v: %s; want refused naming %s", err, out, mf)
		}
		// One byte of a disk's data.
		b2 := tamperedCopy(t)
		disk := filepath.Join(b2, "vda.vmdk")
		flipDataByte(t, disk)
		out, err = w.f.ferryctl("bundle", "verify", b2)
		if err == nil || !strings.Contains(out, disk+": SHA-256 of the file") {
			t.Errorf("verify of a changed disk: %v: %s; want refused naming %s", err, out, disk)
		}
	})
	t.Run("import", func(t *testing.T) {
		if bundles["vmdk"] == "" {
			t.Skip("no vmdk bundle")
		}
		importBundle(t, dest, filepath.Base(bundles["vmdk"]), key.GetPublicKey(), src)
	})
	t.Run("cancel", func(t *testing.T) {
		name := w.createExportCLI("export", "create", "--source", w.source, "--migration-server", w.server, "--vm", src.Name,
			"--dir", dest, "--bundle-name", "cancelled", "--rate-limit", "262144", "-o", "json")
		// Midway: EXPORTING, its partial bundle there, disk files in it.
		w.waitJob(name, 2*time.Minute, "the export to write", func(j *ferryv1.MigrationJob) bool {
			partial, _ := filepath.Glob(filepath.Join(dest, ".cancelled.ferry-partial-*", "vda.qcow2"))
			return (j.GetPhase() == ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_EXPORTING && len(partial) == 1) || terminal(j)
		})
		out, err := w.f.ferryctl("job", "cancel", name)
		must(t, err)
		job := w.waitJob(name, time.Minute, "the export to be cancelled", terminal)
		if job.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_CANCELLED {
			t.Fatalf("export ended %s (%s), want cancelled; cancel said %s", job.GetState(), job.GetReason(), out)
		}
		waitNoPartial(t, w, dest)
		if _, err := os.Stat(filepath.Join(dest, "cancelled")); err == nil {
			t.Errorf("the cancelled bundle is at the destination")
		}
	})
	t.Logf("TestExportBundle took %s", time.Since(start).Round(time.Second))
}

// createExportCLI runs ferryctl export create and returns the job's name.
func (w *world) createExportCLI(args ...string) string {
	w.t.Helper()
	out, err := w.f.ferryctl(args...)
	if err != nil {
		w.t.Fatalf("ferryctl %s: %v: %s", strings.Join(args, " "), err, out)
	}
	var resp ferryv1.CreateExportJobsResponse
	if err := protojson.Unmarshal([]byte(out), &resp); err != nil || len(resp.GetJobs()) != 1 {
		w.t.Fatalf("export create answered %v: %s", err, out)
	}
	return resp.GetJobs()[0].GetName()
}

// checkExportPhases wants CONVERTING then EXPORTING, each disk done and
// verified.
func checkExportPhases(t *testing.T, job *ferryv1.MigrationJob) {
	t.Helper()
	var phases []string
	for _, p := range job.GetPhaseTimings() {
		phases = append(phases, p.GetPhase().String())
	}
	if strings.Join(phases, ",") != "MIGRATION_JOB_PHASE_CONVERTING,MIGRATION_JOB_PHASE_EXPORTING" {
		t.Errorf("phases %v, want CONVERTING, EXPORTING", phases)
	}
	for _, d := range job.GetDisks() {
		if d.GetTotalBytes() == 0 || d.GetDoneBytes() != d.GetTotalBytes() || !d.GetVerified() {
			t.Errorf("disk %s progress %d/%d, verified %v", d.GetSourceDisk(), d.GetDoneBytes(), d.GetTotalBytes(), d.GetVerified())
		}
	}
}

// rawSHA256 is sha256sum of `qemu-img convert -O raw` of an image.
func rawSHA256(t *testing.T, image string) string {
	t.Helper()
	raw := filepath.Join(t.TempDir(), "raw")
	testenv.Run(t, "qemu-img", "convert", "-O", "raw", image, raw)
	out, err := exec.Command("sha256sum", raw).Output()
	must(t, err)
	return strings.Fields(string(out))[0]
}

// flipDataByte changes one byte of the file in its last quarter, where
// a streamOptimized VMDK holds compressed grains.
func flipDataByte(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	must(t, err)
	defer f.Close()
	st, err := f.Stat()
	must(t, err)
	b := make([]byte, 1)
	off := st.Size() / 2
	_, err = f.ReadAt(b, off)
	must(t, err)
	b[0] ^= 0x01
	_, err = f.WriteAt(b, off)
	must(t, err)
}

// waitNoPartial waits until the destination holds no partial bundle: the
// agent discards it as the cancelled job ends.
func waitNoPartial(t *testing.T, w *world, dest string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		left, _ := filepath.Glob(filepath.Join(dest, ".cancelled.*"))
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("partial bundle left at the destination: %v", left)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// importBundle imports the bundle id of dir into a second one-node Ferry
// through a bundle source signed with key, migrates it to a libvirt
// domain, and checks the disks byte for byte and the domain field by
// field against the VM the bundle came from. A copy of the bundle with
// one disk byte changed after the sync fails its job naming the file; a
// copy with a changed manifest is not listed at all.
func importBundle(t *testing.T, dir, id, key string, src *testenv.TestVM) {
	w2 := newWorld(t)
	// The tampered copies, beside the bundle.
	diskTampered := filepath.Join(dir, id+"-disk")
	testenv.Run(t, "cp", "-a", filepath.Join(dir, id), diskTampered)
	manifestTampered := filepath.Join(dir, id+"-manifest")
	testenv.Run(t, "cp", "-a", filepath.Join(dir, id), manifestTampered)
	mf := filepath.Join(manifestTampered, bundle.ManifestFile)
	raw, err := os.ReadFile(mf)
	must(t, err)
	must(t, os.WriteFile(mf, []byte(strings.Replace(string(raw), `"cpus": 1`, `"cpus": 4`, 1)), 0o644))

	s, err := w2.f.client.Sources().CreateSource(ctx(t, 10*time.Second), &ferryv1.CreateSourceRequest{Source: &ferryv1.Source{
		Type: ferryv1.Platform_PLATFORM_BUNDLE, Bundle: &ferryv1.BundleLocation{Path: dir, PublicKey: key}}})
	must(t, err)
	resp, err := w2.f.client.Sources().ListSourceVMs(ctx(t, time.Minute), &ferryv1.ListSourceVMsRequest{Source: s.GetName(), Refresh: true})
	must(t, err)
	var vm, tampered *ferryv1.SourceVm
	for _, v := range resp.GetVms() {
		switch v.GetId() {
		case id:
			vm = v
		case filepath.Base(diskTampered):
			tampered = v
		case filepath.Base(manifestTampered):
			t.Errorf("the bundle with a changed manifest is listed: %v", v)
		}
	}
	if vm == nil || tampered == nil {
		t.Fatalf("the bundle source lists %v; want %s and %s", resp.GetVms(), id, filepath.Base(diskTampered))
	}
	if vm.GetName() != src.Name || len(vm.GetDisks()) != 2 || len(vm.GetNics()) != 1 || vm.GetNics()[0].GetMac() != src.MACs[0] {
		t.Errorf("bundle VM = %v", vm)
	}
	flipDataByte(t, filepath.Join(diskTampered, "vdb.vmdk"))

	start := true
	migrate := func(v *ferryv1.SourceVm) (*ferryv1.MigrationJobSpec, *ferryv1.MigrationJob) {
		spec := w2.spec(v, &ferryv1.MigrationOptions{AutoStart: &start})
		spec.SourceVm = v.GetId()
		spec.Target.VmName = v.GetId() + "-imported"
		r, err := w2.f.client.Jobs().CreateMigrationJobs(ctx(t, time.Minute), &ferryv1.CreateMigrationJobsRequest{
			Source: s.GetName(), MigrationServer: w2.server, Jobs: []*ferryv1.MigrationJobSpec{spec}})
		must(t, err)
		return spec, w2.waitJob(r.GetJobs()[0].GetName(), 3*time.Minute, "the import to end", terminal)
	}
	spec, job := migrate(vm)
	if job.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
		t.Fatalf("import ended %s: %s", job.GetState(), job.GetReason())
	}
	for _, d := range src.Disks {
		compare(t, d.Path, w2.volume(job.GetName(), d.Target))
	}
	checkDomain(t, w2, spec.GetTarget(), src)

	_, job = migrate(tampered)
	want := filepath.Join(diskTampered, "vdb.vmdk") + ": SHA-256 of the file"
	if job.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED || !strings.Contains(job.GetReason(), want) {
		t.Errorf("import of a tampered bundle ended %s: %q; want FAILED naming %q", job.GetState(), job.GetReason(), want)
	}
}

// TestExportVMwareVM exports a VM of the vCenter simulator (UEFI, three
// real VMDKs: streamOptimized, monolithicSparse, monolithicFlat) through
// the VMware source driver into a qcow2 bundle: each disk equals the
// source's raw content, the manifest says UEFI, and the bundle verifies.
func TestExportVMwareVM(t *testing.T) {
	t.Parallel() // see doc.go
	start := time.Now()
	w := newWorld(t)
	sim := vcsimtest.Start(t)
	raws := prepareVMwareVM(t, sim)
	source := w.createVMwareSource(sim)
	server := w.createVMwareServer()
	vm := w.sourceVM(source, "DC0_H0_VM0")
	dest := t.TempDir()
	resp, err := w.f.client.Jobs().CreateExportJobs(ctx(t, time.Minute), &ferryv1.CreateExportJobsRequest{Source: source, MigrationServer: server,
		Jobs: []*ferryv1.ExportJobSpec{{SourceVm: vm.GetId(), Export: &ferryv1.ExportSpec{BundleName: "vm0",
			Destination: &ferryv1.ExportDestination{Path: dest}}}}})
	must(t, err)
	job := w.waitJob(resp.GetJobs()[0].GetName(), 3*time.Minute, "the export to end", terminal)
	if job.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
		t.Fatalf("export ended %s: %s", job.GetState(), job.GetReason())
	}
	checkExportPhases(t, job)
	dir := filepath.Join(dest, "vm0")
	m, _, err := bundle.Verify(ctx(t, time.Minute), dir, bundle.Options{})
	must(t, err)
	if len(m.Disks) != 3 || m.Source.Type != "PLATFORM_VMWARE" {
		t.Fatalf("manifest disks %d, source %+v", len(m.Disks), m.Source)
	}
	for i, d := range m.Disks {
		compare(t, raws[i], filepath.Join(dir, d.File))
	}
	var tgt ferryv1.TargetVm
	must(t, protojson.Unmarshal(m.Target, &tgt))
	if tgt.GetFirmware() != ferryv1.Firmware_FIRMWARE_UEFI || tgt.GetCpus() != 2 || len(tgt.GetNics()) != 2 {
		t.Errorf("manifest target = %v", &tgt)
	}
	t.Logf("TestExportVMwareVM took %s", time.Since(start).Round(time.Second))
}

// TestExportImportUEFIVM: a paused UEFI VM's bundle carries its NVRAM,
// byte for byte; imported (here, through a bundle source of the same
// Ferry), the target is UEFI with that NVRAM.
func TestExportImportUEFIVM(t *testing.T) {
	t.Parallel() // see doc.go
	start := time.Now()
	w := newWorld(t)
	src := testenv.NewTestVM(t, w.lv, testenv.VMOptions{UEFI: true})
	vm := w.sourceVM(w.source, src.Name)
	dest := t.TempDir()
	resp, err := w.f.client.Jobs().CreateExportJobs(ctx(t, time.Minute), &ferryv1.CreateExportJobsRequest{Source: w.source, MigrationServer: w.server,
		Jobs: []*ferryv1.ExportJobSpec{{SourceVm: src.Name, Options: &ferryv1.MigrationOptions{PauseSourceVm: true},
			Export: &ferryv1.ExportSpec{Destination: &ferryv1.ExportDestination{Path: dest}}}}})
	must(t, err)
	job := w.waitJob(resp.GetJobs()[0].GetName(), 3*time.Minute, "the export to end", terminal)
	if job.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
		t.Fatalf("export ended %s: %s", job.GetState(), job.GetReason())
	}
	dir := filepath.Join(dest, src.Name)
	m, _, err := bundle.Verify(ctx(t, time.Minute), dir, bundle.Options{})
	must(t, err)
	original, err := os.ReadFile(src.NVRAM)
	must(t, err)
	if m.NVRAM == nil {
		t.Fatal("the bundle of a UEFI VM has no NVRAM")
	}
	exported, err := os.ReadFile(filepath.Join(dir, m.NVRAM.File))
	must(t, err)
	if !bytes.Equal(exported, original) {
		t.Fatalf("the bundle's NVRAM (%d bytes) is not the source's (%d bytes)", len(exported), len(original))
	}

	s, err := w.f.client.Sources().CreateSource(ctx(t, 10*time.Second), &ferryv1.CreateSourceRequest{Source: &ferryv1.Source{
		Type: ferryv1.Platform_PLATFORM_BUNDLE, Bundle: &ferryv1.BundleLocation{Path: dest}}})
	must(t, err)
	bvm := w.sourceVM(s.GetName(), src.Name)
	if bvm.GetFirmware() != ferryv1.Firmware_FIRMWARE_UEFI || bvm.GetFirmware() != vm.GetFirmware() {
		t.Fatalf("bundle VM firmware %s", bvm.GetFirmware())
	}
	spec := w.spec(bvm, nil)
	r, err := w.f.client.Jobs().CreateMigrationJobs(ctx(t, time.Minute), &ferryv1.CreateMigrationJobsRequest{
		Source: s.GetName(), MigrationServer: w.server, Jobs: []*ferryv1.MigrationJobSpec{spec}})
	must(t, err)
	name := r.GetJobs()[0].GetName()
	ij := w.waitJob(name, 3*time.Minute, "the import to end", terminal)
	if ij.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
		t.Fatalf("import ended %s: %s", ij.GetState(), ij.GetReason())
	}
	for _, d := range src.Disks {
		compare(t, d.Path, w.volume(name, d.Target))
	}
	var dom libvirtxml.Domain
	must(t, dom.Unmarshal(w.lv.Virsh(t, "dumpxml", spec.GetTarget().GetVmName())))
	if dom.OS == nil || dom.OS.Loader == nil && dom.OS.Firmware != "efi" || dom.OS.NVRam == nil {
		t.Fatalf("target OS section %+v has no UEFI loader or NVRAM", dom.OS)
	}
	copied, err := os.ReadFile(dom.OS.NVRam.NVRam)
	must(t, err)
	if !bytes.Equal(copied, original) {
		t.Errorf("target NVRAM (%d bytes) is not the bundle's (%d bytes)", len(copied), len(original))
	}
	t.Logf("TestExportImportUEFIVM took %s", time.Since(start).Round(time.Second))
}
