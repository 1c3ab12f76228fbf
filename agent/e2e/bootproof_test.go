package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"libvirt.org/go/libvirtxml"

	"github.com/ferry-v2v/ferry/agent/internal/target"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"
)

// serialLog is where the agent logs the serial console of a target VM
// whose boot is verified.
func serialLog(vm string) string {
	return filepath.Join(target.DefaultSerialLogDir, vm+".ferry-serial.log")
}

// TestVerifyBootBySerialConsole: a q35 VM booting from its second disk,
// whose boot sector prints "FERRY BOOTED FROM vdb" on the serial port and
// has neither network nor guest agent, migrates with verify_boot: the job
// succeeds with boot_verified true, by the serial console's line, which
// ferryctl job get shows; the target domain logs its serial console to a
// file and has a guest agent channel.
func TestVerifyBootBySerialConsole(t *testing.T) {
	t.Parallel() // see doc.go
	w := newWorld(t)
	src := testenv.NewTestVM(t, w.lv, testenv.VMOptions{Machine: "q35", BootSector: true, BootDisk: 1})
	spec := w.spec(w.sourceVM(w.source, src.Name), &ferryv1.MigrationOptions{VerifyBoot: true})
	vmName := spec.GetTarget().GetVmName()
	name := w.createJob(spec)
	job := w.waitJob(name, 3*time.Minute, "the job to end", terminal)
	if job.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
		t.Fatalf("job ended %s: %s", job.GetState(), job.GetReason())
	}
	wantBy := "serial console: " + testenv.BootMessage("vdb")
	if !job.GetBootVerified() || job.GetBootVerifiedBy() != wantBy {
		t.Errorf("boot_verified %v by %q, want true by %q", job.GetBootVerified(), job.GetBootVerifiedBy(), wantBy)
	}
	out, err := w.f.ferryctl("job", "get", name)
	if err != nil || !strings.Contains(out, "yes: "+wantBy) {
		t.Errorf("ferryctl job get: %v: %s; want Boot verified yes: %s", err, out, wantBy)
	}

	var dom libvirtxml.Domain
	if err := dom.Unmarshal(w.lv.Virsh(t, "dumpxml", vmName)); err != nil {
		t.Fatal(err)
	}
	if s := dom.Devices.Serials; len(s) != 1 || s[0].Log == nil || s[0].Log.File != serialLog(vmName) || s[0].Log.Append != "off" {
		t.Errorf("target serials %+v, want one logged to %s (append off)", s, serialLog(vmName))
	}
	if c := dom.Devices.Channels; len(c) != 1 || c[0].Target == nil || c[0].Target.VirtIO == nil ||
		c[0].Target.VirtIO.Name != target.GuestAgentChannel {
		t.Errorf("target channels %+v, want the guest agent's %s", c, target.GuestAgentChannel)
	}
	if b, err := os.ReadFile(serialLog(vmName)); err != nil || !strings.Contains(string(b), testenv.BootMessage("vdb")) {
		t.Errorf("serial log %s: %v: %q", serialLog(vmName), err, b)
	}
	if state := strings.TrimSpace(w.lv.Virsh(t, "domstate", vmName)); state != "running" {
		t.Errorf("target VM is %s, want running", state)
	}
	t.Logf("job %s: boot verified by %s", name, job.GetBootVerifiedBy())
}

// TestVerifyBootFailsAGuestThatDoesNotBoot: a VM whose disks hold no boot
// sector migrates with verify_boot under a 20s bound: the job fails with
// what was looked for, and is rolled back: no target domain, no serial
// log, no volumes.
func TestVerifyBootFailsAGuestThatDoesNotBoot(t *testing.T) {
	t.Parallel() // see doc.go
	w := newWorldWith(t, worldOptions{agentArgs: []string{"--verify-boot-timeout", "20s"}})
	src := testenv.NewTestVM(t, w.lv, testenv.VMOptions{})
	vm := w.sourceVM(w.source, src.Name)
	spec := w.spec(vm, &ferryv1.MigrationOptions{VerifyBoot: true})
	vmName := spec.GetTarget().GetVmName()
	name := w.createJob(spec)
	job := w.waitJob(name, 3*time.Minute, "the job to end", terminal)
	want := fmt.Sprintf("define the target VM: the target VM did not show it booted within 20s: no guest agent answer, "+
		"no DHCP lease for %s on %s, nothing on its serial console", strings.ToLower(vm.GetNics()[0].GetMac()), w.netName)
	if job.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED || job.GetReason() != want {
		t.Fatalf("job ended %s: %q; want FAILED: %q", job.GetState(), job.GetReason(), want)
	}
	if job.GetBootVerified() || job.GetBootVerifiedBy() != "" {
		t.Errorf("a failed job says boot_verified %v by %q", job.GetBootVerified(), job.GetBootVerifiedBy())
	}
	if out, err := w.lv.TryVirsh("dominfo", vmName); err == nil {
		t.Errorf("target VM %s is still defined: %s", vmName, out)
	}
	if _, err := os.Stat(serialLog(vmName)); !os.IsNotExist(err) {
		t.Errorf("the serial log %s is still there: %v", serialLog(vmName), err)
	}
	for _, d := range vm.GetDisks() {
		if _, err := os.Stat(w.volume(name, d.GetTarget())); !os.IsNotExist(err) {
			t.Errorf("the target volume of %s is still there: %v", d.GetTarget(), err)
		}
	}
	t.Logf("job %s failed: %s", name, job.GetReason())
}

// TestVerifyBootRefusesNoStart: verify_boot starts the target, so a job
// that also sets auto_start false is refused, the field named.
func TestVerifyBootRefusesNoStart(t *testing.T) {
	t.Parallel() // see doc.go
	w := newWorld(t)
	src := testenv.NewTestVM(t, w.lv, testenv.VMOptions{})
	spec := w.spec(w.sourceVM(w.source, src.Name), &ferryv1.MigrationOptions{VerifyBoot: true, AutoStart: proto.Bool(false)})
	_, err := w.f.client.Jobs().CreateMigrationJobs(ctx(t, 10*time.Second), &ferryv1.CreateMigrationJobsRequest{
		Source: w.source, MigrationServer: w.server, Jobs: []*ferryv1.MigrationJobSpec{spec}})
	want := "jobs[0].options.verify_boot: proving the target boots starts it, but auto_start is false; drop one"
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), want) {
		t.Fatalf("create: %v; want INVALID_ARGUMENT with %q", err, want)
	}
}
