package e2e

import (
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// TestKVMGuestAgentKeepsItsAddress: a KVM source VM whose guest runs a
// QEMU guest agent (a booting test VM: the host's kernel, an init that
// configures the NIC and speaks the agent protocol) keeps its address.
// The source's inventory reports the guest's address on the NIC (libvirt's
// virDomainInterfaceAddresses, source agent); a job asking for the
// source NIC's address gets it with the source MAC, with no note in the
// preview, and the migrated VM's NIC is reserved that address in the
// target network's DHCP.
func TestKVMGuestAgentKeepsItsAddress(t *testing.T) {
	t.Parallel() // see doc.go
	w := newWorld(t)
	subnet := strings.TrimSuffix(w.l3Range[0], ".10") // 10.N.0, the range is .10 to .99
	guestIP := subnet + ".42"
	src := testenv.NewTestVM(t, w.lv, testenv.VMOptions{GuestIP: guestIP + "/24"})

	var vm *ferryv1.SourceVm
	testkit.WaitFor(t, 4*time.Minute, "the source inventory to report the guest's address", func() bool {
		vm = w.sourceVM(w.source, src.Name)
		return len(vm.GetNics()) == 1 && len(vm.GetNics()[0].GetIpAddresses()) > 0
	})
	if n := vm.GetNics()[0]; !strings.EqualFold(n.GetMac(), src.MACs[0]) || !slices.Contains(n.GetIpAddresses(), guestIP) {
		console, _ := os.ReadFile(src.ConsoleLog)
		t.Fatalf("source NIC %s has addresses %v, want %s with %s; guest console:\n%s", n.GetMac(), n.GetIpAddresses(),
			src.MACs[0], guestIP, console)
	}

	spec := w.spec(vm, &ferryv1.MigrationOptions{UseSourceNicAddress: true, AutoStart: proto.Bool(false)})
	spec.Target.Nics = []*ferryv1.TargetNic{{SourceMac: src.MACs[0], L3Network: w.l3}}
	p, err := w.f.client.Jobs().PreviewMigrationJobs(ctx(t, time.Minute), &ferryv1.PreviewMigrationJobsRequest{
		Source: w.source, MigrationServer: w.server, Jobs: []*ferryv1.MigrationJobSpec{spec}})
	must(t, err)
	if len(p.GetNotes()) != 1 || !strings.Contains(p.GetNotes()[0], ": backup API because the VM is running") || len(p.GetFailedChecks()) != 0 {
		t.Errorf("preview notes %q, failed checks %q; want only the copy method's note", p.GetNotes(), p.GetFailedChecks())
	}
	name := w.createJob(spec)
	j := w.job(name)
	if nics := j.GetTarget().GetNics(); len(nics) != 1 || nics[0].GetIp() != guestIP || !strings.EqualFold(nics[0].GetMac(), src.MACs[0]) ||
		nics[0].GetL3Network() != w.l3 {
		t.Fatalf("target NICs %v, want one on %s with MAC %s and IP %s", nics, w.l3, src.MACs[0], guestIP)
	}
	j = w.waitJob(name, 5*time.Minute, "the job to end", terminal)
	if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
		t.Fatalf("job ended %s: %s", j.GetState(), j.GetReason())
	}
	w.checkDHCPHosts(map[string]string{strings.ToLower(src.MACs[0]): guestIP})
}
