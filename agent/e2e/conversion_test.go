package e2e

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
	"github.com/ferry-v2v/ferry/agent/internal/prepare"
	"github.com/ferry-v2v/ferry/agent/internal/source/vmware/vcsimtest"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"
	"github.com/ferry-v2v/ferry/pkg/testkit"
	"google.golang.org/protobuf/proto"
)

var debianVMDKMu sync.Mutex

// debianVMDK is the Debian guest (testenv.DebianGuest) as the
// streamOptimized VMDK a vCenter exports, cached beside it.
// The tests that use it run in parallel: one makes it, the others wait
// (the image build itself takes a file lock, for other test binaries).
func debianVMDK(t testing.TB) string {
	t.Helper()
	img := testenv.DebianGuest(t)
	debianVMDKMu.Lock()
	defer debianVMDKMu.Unlock()
	out := strings.TrimSuffix(img, ".qcow2") + ".vmdk"
	if _, err := os.Stat(out); err == nil {
		return out
	}
	start := time.Now()
	// A name of this process's own: another test binary may be making it
	// too (the rename of either leaves the same file).
	tmp := fmt.Sprintf("%s.%d.tmp", out, os.Getpid())
	if b, err := exec.Command("qemu-img", "convert", "-f", "qcow2", "-O", "vmdk", "-o", "subformat=streamOptimized", img, tmp).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert to streamOptimized: %v: %s", err, b)
	}
	must(t, os.Rename(tmp, out))
	t.Logf("made %s in %s", out, time.Since(start).Round(time.Second))
	return out
}

// vmwareDebianJob puts the Debian guest on the simulator's DC0_H0_VM0 and
// creates a job for it with opts, its NIC on the world's network.
func (w *world) vmwareDebianJob(sim *vcsimtest.Sim, opts *ferryv1.MigrationOptions) (name, ip string) {
	t := w.t
	vmdk := debianVMDK(t)
	sim.PrepareVM(ctx(t, 3*time.Minute), t, "DC0_H0_VM0", vcsimtest.VMSpec{Firmware: "bios", CPUs: 1, MemoryMB: 768,
		Disks: []vcsimtest.Disk{{Files: []string{vmdk}, Capacity: 2 << 30}}})
	source := w.createVMwareSource(sim)
	server := w.createVMwareServer()
	vm := w.sourceVM(source, "DC0_H0_VM0")
	spec := w.spec(vm, opts)
	resp, err := w.f.client.Jobs().CreateMigrationJobs(ctx(t, 10*time.Second), &ferryv1.CreateMigrationJobsRequest{
		Source: source, MigrationServer: server, Jobs: []*ferryv1.MigrationJobSpec{spec}})
	must(t, err)
	return resp.GetJobs()[0].GetName(), resp.GetJobs()[0].GetTarget().GetNics()[0].GetIp()
}

// dhcpLease is the address the world's network leased to mac, if any.
func (w *world) dhcpLease(mac string) string { return dhcpLease(w.lv, w.netName, mac) }

// dhcpLease is the address the libvirt network leased to mac, if any.
func dhcpLease(lv *testenv.Libvirt, network, mac string) string {
	out, err := lv.TryVirsh("net-dhcp-leases", network, "--mac", mac)
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 5 && strings.EqualFold(f[2], mac) {
			return strings.Split(f[4], "/")[0]
		}
	}
	return ""
}

// guestReplies says whether the guest at ip answers a TCP connection to
// port 22 (ping is not installed everywhere): accepting it, or refusing it
// with a reset, which only the guest's own kernel sends. An address nobody
// holds times out or is unreachable instead.
func guestReplies(ip string) bool {
	c, err := net.DialTimeout("tcp", net.JoinHostPort(ip, "22"), 3*time.Second)
	if err == nil {
		c.Close()
		return true
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

func logTimings(t *testing.T, job *ferryv1.MigrationJob) {
	t.Helper()
	total := job.GetDuration().AsDuration()
	for _, pt := range job.GetPhaseTimings() {
		d := pt.GetEndTime().AsTime().Sub(pt.GetStartTime().AsTime())
		t.Logf("phase %s: %s (%.0f%% of the job's %s), %d bytes", pt.GetPhase(), d.Round(100*time.Millisecond),
			100*d.Seconds()/total.Seconds(), total.Round(100*time.Millisecond), pt.GetBytes())
	}
}

// TestConvertVMwareDebianGuest migrates a real Debian 12 guest configured
// as on VMware (open-vm-tools, its NIC configured as ens192, an initramfs
// without virtio) from the vCenter simulator with guest conversion on (the
// default for VMware): PREPARING runs virt-v2v-in-place, the job records
// the inspection, the target boots (boot_verified), its NIC comes up with
// the reserved address (a DHCP lease for its MAC from the target network,
// and the guest's kernel answers a TCP connection there), and VMware tools
// are gone from its disk.
func TestConvertVMwareDebianGuest(t *testing.T) {
	t.Parallel() // see doc.go
	heavy(t)
	testenv.LibguestfsTCG(t)
	debianVMDK(t) // before the world: a first build takes minutes
	w := newWorld(t)
	sim := vcsimtest.Start(t)
	start := time.Now()
	name, ip := w.vmwareDebianJob(sim, &ferryv1.MigrationOptions{VerifyBoot: true})
	job := w.waitJob(name, 15*time.Minute, "the job to end", terminal)
	if job.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
		t.Fatalf("job ended %s: %s", job.GetState(), job.GetReason())
	}
	logTimings(t, job)
	if !job.GetBootVerified() {
		t.Errorf("boot_verified false (by %q)", job.GetBootVerifiedBy())
	}
	g := job.GetGuestInspection()
	if g.GetOsType() != "linux" || g.GetDistribution() != "debian" || !strings.HasPrefix(g.GetVersion(), "12.") || g.GetFirmware() != "bios" {
		t.Errorf("guest inspection %v, want linux debian 12.x bios", g)
	}
	mac := strings.ToLower(job.GetTarget().GetNics()[0].GetSourceMac())
	wantChanges := []string{"removed package open-vm-tools", "NIC " + mac + " named ens192"}
	for _, want := range wantChanges {
		if !strings.Contains(strings.Join(g.GetChanges(), "\n"), want) {
			t.Errorf("guest changes %q lack %q", g.GetChanges(), want)
		}
	}
	out, err := w.f.ferryctl("job", "get", name)
	if err != nil || !strings.Contains(out, "debian") || !strings.Contains(out, "open-vm-tools") {
		t.Errorf("ferryctl job get: %v: %s; want the guest inspection", err, out)
	}

	var leased string
	testkit.WaitFor(t, 10*time.Minute, "a DHCP lease for "+mac, func() bool {
		leased = w.dhcpLease(mac)
		return leased != ""
	})
	t.Logf("DHCP lease %s for %s %s after the job started", leased, mac, time.Since(start).Round(time.Second))
	if leased != ip {
		t.Errorf("the guest leased %s, want the reserved %s", leased, ip)
	}
	testkit.WaitFor(t, 2*time.Minute, "a reply from "+ip, func() bool { return guestReplies(ip) })

	// VMware tools are gone from the target's disk.
	vmName := job.GetTarget().GetVmName()
	_, _ = w.lv.TryVirsh("destroy", vmName)
	vol := w.volume(name, job.GetTarget().GetDisks()[0].GetSourceDisk())
	gf := exec.Command("guestfish", "--ro", "-a", vol, "-i", "exists", "/usr/bin/vmtoolsd")
	b, err := gf.CombinedOutput()
	if err != nil || strings.TrimSpace(string(b)) != "false" {
		t.Errorf("guestfish exists /usr/bin/vmtoolsd on the target: %v: %q, want false", err, b)
	}
	t.Logf("whole test %s", time.Since(start).Round(time.Second))
}

// TestConversionFailureThenRestartWithoutIt: a VMware VM whose disk holds
// no OS fails in PREPARING with virt-v2v's inspection reason, its log kept
// in the job's cache directory, the cache image left as the copy made it
// (byte for byte the source disk, no converted overlay) and the source's
// VMDK unchanged; restarted with guest_conversion OFF it succeeds and the
// target holds the source disk byte for byte.
func TestConversionFailureThenRestartWithoutIt(t *testing.T) {
	t.Parallel() // see doc.go
	heavy(t)
	testenv.LibguestfsTCG(t)
	w := newWorld(t)
	sim := vcsimtest.Start(t)
	dir := t.TempDir()
	raw := vcsimtest.RawImage(t, dir, "noos", 16<<20, 11)
	vmdk := vcsimtest.ConvertVMDK(t, raw, dir, "noos", "streamOptimized")
	before, err := os.ReadFile(vmdk[0])
	must(t, err)
	sim.PrepareVM(ctx(t, 30*time.Second), t, "DC0_H0_VM0", vcsimtest.VMSpec{Firmware: "bios", CPUs: 1, MemoryMB: 64,
		Disks: []vcsimtest.Disk{{Files: vmdk, Capacity: 16 << 20}}})
	source := w.createVMwareSource(sim)
	server := w.createVMwareServer()
	vm := w.sourceVM(source, "DC0_H0_VM0")
	spec := w.spec(vm, &ferryv1.MigrationOptions{AutoStart: proto.Bool(false)})
	resp, err := w.f.client.Jobs().CreateMigrationJobs(ctx(t, 10*time.Second), &ferryv1.CreateMigrationJobsRequest{
		Source: source, MigrationServer: server, Jobs: []*ferryv1.MigrationJobSpec{spec}})
	must(t, err)
	name := resp.GetJobs()[0].GetName()
	start := time.Now()
	job := w.waitJob(name, 10*time.Minute, "the job to end", terminal)
	t.Logf("failed conversion: job ended after %s", time.Since(start).Round(time.Second))
	const wantReason = "convert the guest: virt-v2v-in-place: inspection could not detect the source guest"
	if job.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED || !strings.HasPrefix(job.GetReason(), wantReason) {
		t.Fatalf("job ended %s: %q, want FAILED: %q...", job.GetState(), job.GetReason(), wantReason)
	}
	if job.GetGuestInspection() != nil {
		t.Errorf("a failed job records the inspection %v", job.GetGuestInspection())
	}
	jobDir := filepath.Join(w.cacheDir, path.Base(name))
	if b, err := os.ReadFile(filepath.Join(jobDir, prepare.LogName)); err != nil || !strings.Contains(string(b), "inspection could not detect") {
		t.Errorf("virt-v2v log: %v (%d bytes), want its error", err, len(b))
	}
	disk := spec.GetTarget().GetDisks()[0].GetSourceDisk()
	img, format, err := cache.ImagePath(jobDir, disk)
	must(t, err)
	if cmp, same := vcsimtest.Compare(t, raw, "raw", img, format); !same {
		t.Errorf("the cache image differs from the source disk after the failed conversion: %s", cmp)
	}
	if cache.Prepared(jobDir, disk) {
		t.Errorf("a converted overlay was left in %s", jobDir)
	}
	after, err := os.ReadFile(filepath.Join(sim.DatastoreDir(), "DC0_H0_VM0", filepath.Base(vmdk[0])))
	if err == nil && string(after) != string(before) {
		t.Errorf("the source VMDK changed")
	}

	_, err = w.f.client.Jobs().RestartMigrationJob(ctx(t, 10*time.Second), &ferryv1.RestartMigrationJobRequest{
		Name: name, GuestConversion: ferryv1.GuestConversion_GUEST_CONVERSION_OFF})
	must(t, err)
	start = time.Now()
	job = w.waitJob(name, 5*time.Minute, "the restarted job to end", func(j *ferryv1.MigrationJob) bool {
		return j.GetAttempt() == 2 && terminal(j)
	})
	t.Logf("restart without conversion: job ended after %s", time.Since(start).Round(time.Second))
	if job.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
		t.Fatalf("restarted job ended %s: %s", job.GetState(), job.GetReason())
	}
	if job.GetOptions().GetGuestConversion() != ferryv1.GuestConversion_GUEST_CONVERSION_OFF {
		t.Errorf("restarted job's guest_conversion %s, want OFF", job.GetOptions().GetGuestConversion())
	}
	compare(t, raw, w.volume(name, disk))
}

// TestVMwareDebianGuestWithoutConversion: the same guest migrated with
// guest_conversion OFF does not come up on its network: its initramfs has
// no virtio driver for the target's disk, and its network configuration
// names ens192. No DHCP lease for its MAC within the bound the converted
// guest needed with room to spare.
func TestVMwareDebianGuestWithoutConversion(t *testing.T) {
	t.Parallel() // see doc.go
	heavy(t)
	debianVMDK(t)
	w := newWorld(t)
	sim := vcsimtest.Start(t)
	name, _ := w.vmwareDebianJob(sim, &ferryv1.MigrationOptions{AutoStart: proto.Bool(true),
		GuestConversion: ferryv1.GuestConversion_GUEST_CONVERSION_OFF})
	job := w.waitJob(name, 10*time.Minute, "the job to end", terminal)
	if job.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
		t.Fatalf("job ended %s: %s", job.GetState(), job.GetReason())
	}
	logTimings(t, job)
	for _, pt := range job.GetPhaseTimings() {
		if pt.GetPhase() == ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_PREPARING {
			t.Errorf("a job without conversion went through PREPARING")
		}
	}
	if job.GetGuestInspection() != nil {
		t.Errorf("guest inspection %v without conversion", job.GetGuestInspection())
	}
	mac := strings.ToLower(job.GetTarget().GetNics()[0].GetSourceMac())
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		if ip := w.dhcpLease(mac); ip != "" {
			t.Fatalf("the unconverted guest leased %s", ip)
		}
		time.Sleep(5 * time.Second)
	}
	state, _ := w.lv.TryVirsh("domstate", job.GetTarget().GetVmName())
	t.Logf("no DHCP lease for %s in 3 minutes; the target is %s", mac, strings.TrimSpace(state))
}
