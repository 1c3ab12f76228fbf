package e2e

import (
	"strings"
	"testing"
	"time"

	"libvirt.org/go/libvirtxml"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"
)

// TestMigrateRunningVM moves a running VM with a root disk and a data disk
// that is mostly holes, and checks the target field by field.
func TestMigrateRunningVM(t *testing.T) {
	t.Parallel() // see doc.go
	w := newWorld(t)
	src := testenv.NewTestVM(t, w.lv, testenv.VMOptions{NICs: 2, CDROMs: 1})
	vm := w.sourceVM(w.source, src.Name)
	if vm.GetCpus() != 1 || vm.GetMemoryBytes() != 64<<20 || len(vm.GetDisks()) != 2 || len(vm.GetNics()) != 2 {
		t.Fatalf("ListSourceVMs described %s as %v", src.Name, vm)
	}
	spec := w.spec(vm, nil)
	name := w.createJob(spec)
	job := w.waitJob(name, 3*time.Minute, "the job to end", terminal)
	if job.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
		t.Fatalf("job ended %s: %s", job.GetState(), job.GetReason())
	}
	for _, d := range src.Disks {
		compare(t, d.Path, w.volume(name, d.Target))
	}
	checkDomain(t, w, spec.GetTarget(), src)
	if st := src.State(t); st != "running" {
		t.Errorf("source VM is %s after the migration, want running", st)
	}
	if jt := src.JobType(t); jt != "None" {
		t.Errorf("source VM still has a %s job", jt)
	}
	if l := leftovers(src); len(l) > 0 {
		t.Errorf("backup files left on the source: %v", l)
	}
	for _, d := range job.GetDisks() {
		if d.GetTotalBytes() == 0 || d.GetDoneBytes() != d.GetTotalBytes() {
			t.Errorf("disk %s progress %d/%d", d.GetSourceDisk(), d.GetDoneBytes(), d.GetTotalBytes())
		}
		if !d.GetVerified() {
			t.Errorf("disk %s not verified against the source's checksums", d.GetSourceDisk())
		}
	}
	if !job.GetVerified() || len(job.GetDisks()) != len(src.Disks) {
		t.Errorf("job verified = %v with %d disks reported, want true for %d", job.GetVerified(), len(job.GetDisks()), len(src.Disks))
	}
	if l := w.f.agents[w.host].lines(`msg="disk verified"`); len(l) != len(src.Disks) {
		t.Errorf("the agent logged %d disks verified, want %d: %v", len(l), len(src.Disks), l)
	}
}

// checkDomain compares the target domain with the job, field by field.
func checkDomain(t *testing.T, w *world, tgt *ferryv1.TargetVm, src *testenv.TestVM) {
	t.Helper()
	var dom libvirtxml.Domain
	if err := dom.Unmarshal(w.lv.Virsh(t, "dumpxml", tgt.GetVmName())); err != nil {
		t.Fatal(err)
	}
	if dom.VCPU == nil || int32(dom.VCPU.Value) != tgt.GetCpus() {
		t.Errorf("vCPUs = %v, want %d", dom.VCPU, tgt.GetCpus())
	}
	if dom.Memory == nil || memBytes(dom.Memory.Value, dom.Memory.Unit) != tgt.GetMemoryBytes() {
		t.Errorf("memory = %v, want %d bytes", dom.Memory, tgt.GetMemoryBytes())
	}
	var disks, cdroms []libvirtxml.DomainDisk
	for _, d := range dom.Devices.Disks {
		if d.Device == "cdrom" {
			cdroms = append(cdroms, d)
		} else {
			disks = append(disks, d)
		}
	}
	if len(disks) != len(src.Disks) {
		t.Fatalf("target has %d disks, want %d", len(disks), len(src.Disks))
	}
	for i, d := range disks {
		if d.Source == nil || d.Source.File == nil || d.Source.File.File != w.volume(jobOf(t, w, tgt), src.Disks[i].Target) {
			t.Errorf("disk %d source = %+v, want the volume of %s (root first)", i, d.Source, src.Disks[i].Target)
		}
		if d.Target == nil || d.Target.Bus != "virtio" {
			t.Errorf("disk %d target = %+v, want bus virtio, kept from the KVM source", i, d.Target)
		}
		if boots := d.Boot != nil && d.Boot.Order == 1; boots != (i == 0) {
			t.Errorf("disk %d boot = %+v; the source boots its first disk", i, d.Boot)
		}
	}
	if m := dom.OS.Type.Machine; !strings.HasPrefix(m, "pc") || strings.Contains(m, "q35") {
		t.Errorf("machine = %s, want the i440fx (pc) family of the source", m)
	}
	if len(cdroms) != int(tgt.GetCdromCount()) {
		t.Errorf("%d CD-ROMs, want %d", len(cdroms), tgt.GetCdromCount())
	}
	if len(dom.Devices.Interfaces) != len(src.MACs) {
		t.Fatalf("%d NICs, want %d", len(dom.Devices.Interfaces), len(src.MACs))
	}
	for i, ifc := range dom.Devices.Interfaces {
		if ifc.MAC == nil || !strings.EqualFold(ifc.MAC.Address, src.MACs[i]) {
			t.Errorf("NIC %d MAC = %+v, want the source's %s", i, ifc.MAC, src.MACs[i])
		}
		if ifc.Source == nil || ifc.Source.Network == nil || ifc.Source.Network.Network != w.netName {
			t.Errorf("NIC %d source = %+v, want network %s", i, ifc.Source, w.netName)
		}
	}
	meta := ""
	if dom.Metadata != nil {
		meta = dom.Metadata.XML
	}
	for _, d := range tgt.GetDisks() {
		if !strings.Contains(meta, d.GetDisplayName()) {
			t.Errorf("metadata lacks display name %q: %s", d.GetDisplayName(), meta)
		}
	}
	if st := strings.TrimSpace(w.lv.Virsh(t, "domstate", tgt.GetVmName())); st != "running" {
		t.Errorf("target VM is %s, want running (auto-start)", st)
	}
	nets := w.lv.Virsh(t, "net-dumpxml", w.netName)
	for _, mac := range src.MACs {
		if !strings.Contains(strings.ToLower(nets), strings.ToLower(mac)) {
			t.Errorf("no DHCP host entry for %s in %s", mac, nets)
		}
	}
}

// jobOf finds the job that made tgt.
func jobOf(t *testing.T, w *world, tgt *ferryv1.TargetVm) string {
	resp, err := w.f.client.Jobs().ListMigrationJobs(ctx(t, 10*time.Second), &ferryv1.ListMigrationJobsRequest{})
	must(t, err)
	for _, j := range resp.GetJobs() {
		if j.GetTarget().GetVmName() == tgt.GetVmName() {
			return j.GetName()
		}
	}
	t.Fatalf("no job made %s", tgt.GetVmName())
	return ""
}

func memBytes(v uint, unit string) int64 {
	switch unit {
	case "", "KiB", "k", "K":
		return int64(v) << 10
	case "MiB", "M":
		return int64(v) << 20
	case "GiB", "G":
		return int64(v) << 30
	case "b", "bytes":
		return int64(v)
	}
	return -1
}
