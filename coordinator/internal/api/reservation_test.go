package api

import (
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/emptypb"

	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// finishJob ends a running job under epoch 1 in state.
func (e *env) finishJob(name string, state ferryv1.MigrationJobState) {
	e.apply(&ledgerv1.Command{Op: &ledgerv1.Command_FinishMigrationJob{FinishMigrationJob: &ledgerv1.FinishMigrationJob{
		Name: name, Epoch: 1, State: state}}})
}

// TestDeletedJobsVMKeepsItsAddress: deleting a succeeded job leaves its
// address reserved on the L3 network for the migrated VM, so the next job
// gets another one; a cancelled job's address goes back to the pool.
func TestDeletedJobsVMKeepsItsAddress(t *testing.T) {
	e := newEnv(t, true)
	e.seed()
	c := ctx(t)
	first := must[*ferryv1.CreateMigrationJobsResponse](t)(e.jobs.CreateMigrationJobs(c, jobsReq(1))).GetJobs()[0]
	if ip := first.GetTarget().GetNics()[0].GetIp(); ip != "10.0.0.2" {
		t.Fatalf("first job got %s, want 10.0.0.2", ip)
	}
	e.startJob(first.GetName(), 1)
	e.finishJob(first.GetName(), ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED)
	must[*emptypb.Empty](t)(e.jobs.DeleteMigrationJob(c, &ferryv1.DeleteMigrationJobRequest{Name: first.GetName()}))

	n := must[*ferryv1.L3Network](t)(e.inv.GetL3Network(c, &ferryv1.GetL3NetworkRequest{Name: "l3Networks/net1"}))
	if rs := n.GetReservations(); len(rs) != 1 || rs[0].GetIp() != "10.0.0.2" || rs[0].GetMac() != "52:54:00:00:00:00" ||
		rs[0].GetVmName() != "target-0" || rs[0].GetJob() != first.GetName() || rs[0].GetCreateTime() == nil {
		t.Fatalf("reservations after delete = %v; want 10.0.0.2 for target-0 (52:54:00:00:00:00) of %s", rs, first.GetName())
	}
	second := must[*ferryv1.CreateMigrationJobsResponse](t)(e.jobs.CreateMigrationJobs(c, jobsReqWith(func(r *ferryv1.CreateMigrationJobsRequest) {
		r.Jobs[0].SourceVm, r.Jobs[0].Target.VmName = "vm-next", "target-next"
	}))).GetJobs()[0]
	if ip := second.GetTarget().GetNics()[0].GetIp(); ip != "10.0.0.3" {
		t.Fatalf("the next job got %s, want 10.0.0.3: 10.0.0.2 stays with the migrated VM", ip)
	}
	_, err := e.jobs.CreateMigrationJobs(c, jobsReqWith(func(r *ferryv1.CreateMigrationJobsRequest) {
		r.Jobs[0].SourceVm, r.Jobs[0].Target.VmName, r.Jobs[0].Target.Nics[0].Ip = "vm-asks", "target-asks", "10.0.0.2"
	}))
	wantCode(t, err, codes.FailedPrecondition, "jobs[0].target.nics[0].ip: 10.0.0.2 on l3Networks/net1 is already held by VM target-0 "+
		"(MAC 52:54:00:00:00:00), reserved when its job "+first.GetName()+" was deleted; pick another address")

	// A cancelled job made no VM: deleting it frees its address.
	e.startJob(second.GetName(), 1)
	must[*ferryv1.CancelMigrationJobResponse](t)(e.jobs.CancelMigrationJob(c, &ferryv1.CancelMigrationJobRequest{Name: second.GetName()}))
	must[*emptypb.Empty](t)(e.jobs.DeleteMigrationJob(c, &ferryv1.DeleteMigrationJobRequest{Name: second.GetName()}))
	third := must[*ferryv1.CreateMigrationJobsResponse](t)(e.jobs.CreateMigrationJobs(c, jobsReqWith(func(r *ferryv1.CreateMigrationJobsRequest) {
		r.Jobs[0].SourceVm, r.Jobs[0].Target.VmName = "vm-third", "target-third"
	}))).GetJobs()[0]
	if ip := third.GetTarget().GetNics()[0].GetIp(); ip != "10.0.0.3" {
		t.Fatalf("after the cancelled job's delete the next job got %s, want 10.0.0.3", ip)
	}
	n = must[*ferryv1.L3Network](t)(e.inv.GetL3Network(c, &ferryv1.GetL3NetworkRequest{Name: "l3Networks/net1"}))
	if len(n.GetReservations()) != 1 {
		t.Fatalf("reservations = %v; a cancelled job reserves nothing", n.GetReservations())
	}
}

// TestAllocationSkipsDHCPHostsOfOtherMACs: an address the target libvirt
// network reserves for another MAC in a DHCP host entry, as the agents
// report it, is neither allocated nor accepted when asked for; the MAC
// it is reserved for may have it.
func TestAllocationSkipsDHCPHostsOfOtherMACs(t *testing.T) {
	e := newEnv(t, true)
	e.seed()
	c := ctx(t)
	must[*ferryv1.L3Network](t)(e.inv.CreateL3Network(c, validNetwork(func(n *ferryv1.L3Network) { n.Name = "l3Networks/lv" })))
	// 192.168.1.10 is held by an old VM in libvirt network "default" on kvm1.
	e.apply(&ledgerv1.Command{Op: &ledgerv1.Command_PutHost{PutHost: &ledgerv1.PutHost{Host: &ferryv1.Host{
		Name: "hosts/kvm1", Cluster: "clusters/c1", Connected: true, Facts: &ferryv1.HostFacts{
			LibvirtNetworks: []*ferryv1.LibvirtNetwork{{Name: "default", DhcpHosts: []*ferryv1.DhcpHost{
				{Mac: "52:54:00:99:99:99", Ip: "192.168.1.10", Name: "old-vm"}}}}}}}}})
	onLV := func(edit func(*ferryv1.TargetNic)) *ferryv1.CreateMigrationJobsRequest {
		return jobsReqWith(func(r *ferryv1.CreateMigrationJobsRequest) {
			r.Jobs[0].Target.Nics[0].L3Network = "l3Networks/lv"
			edit(r.Jobs[0].Target.Nics[0])
		})
	}
	p := must[*ferryv1.PreviewMigrationJobsResponse](t)(e.jobs.PreviewMigrationJobs(c, &ferryv1.PreviewMigrationJobsRequest{
		Source: "sources/kvm", MigrationServer: "migrationServers/kvm", Jobs: onLV(func(*ferryv1.TargetNic) {}).GetJobs()}))
	if ip := p.GetJobs()[0].GetTarget().GetNics()[0].GetIp(); ip != "192.168.1.11" {
		t.Fatalf("preview allocated %s, want 192.168.1.11", ip)
	}
	for _, u := range p.GetUsages() {
		if u.GetKind() == ferryv1.PreviewResourceKind_PREVIEW_RESOURCE_KIND_IP_ADDRESSES && u.GetResource() == "l3Networks/lv" &&
			(u.GetAvailable() != 40 || u.GetNote() != "41 usable addresses in 192.168.1.10-192.168.1.50, 0 held by jobs or reserved for migrated VMs, 1 in DHCP host entries of libvirt network default") {
			t.Errorf("address usage %v", u)
		}
	}
	_, err := e.jobs.CreateMigrationJobs(c, onLV(func(n *ferryv1.TargetNic) { n.Ip = "192.168.1.10" }))
	wantCode(t, err, codes.FailedPrecondition, "jobs[0].target.nics[0].ip: 192.168.1.10 on l3Networks/lv: libvirt network default on hosts/kvm1 "+
		"reserves it for MAC 52:54:00:99:99:99; pick another address")
	j := must[*ferryv1.CreateMigrationJobsResponse](t)(e.jobs.CreateMigrationJobs(c, onLV(func(*ferryv1.TargetNic) {}))).GetJobs()[0]
	if ip := j.GetTarget().GetNics()[0].GetIp(); ip != "192.168.1.11" {
		t.Fatalf("create allocated %s, want 192.168.1.11", ip)
	}
	own := must[*ferryv1.CreateMigrationJobsResponse](t)(e.jobs.CreateMigrationJobs(c, jobsReqWith(func(r *ferryv1.CreateMigrationJobsRequest) {
		r.Jobs[0].SourceVm, r.Jobs[0].Target.VmName = "old-vm", "old-vm"
		r.Jobs[0].Target.Nics[0] = &ferryv1.TargetNic{SourceMac: "52:54:00:99:99:99", L3Network: "l3Networks/lv"}
	}))).GetJobs()[0]
	if ip := own.GetTarget().GetNics()[0].GetIp(); ip != "192.168.1.10" {
		t.Fatalf("the MAC the entry names got %s, want 192.168.1.10", ip)
	}
}

// TestReleaseL3NetworkAddress: a released reservation goes back to the
// pool; releasing an address the network does not reserve names the field.
func TestReleaseL3NetworkAddress(t *testing.T) {
	e := newEnv(t, true)
	e.seed()
	c := ctx(t)
	job := must[*ferryv1.CreateMigrationJobsResponse](t)(e.jobs.CreateMigrationJobs(c, jobsReq(1))).GetJobs()[0]
	e.startJob(job.GetName(), 1)
	e.finishJob(job.GetName(), ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED)
	must[*emptypb.Empty](t)(e.jobs.DeleteMigrationJob(c, &ferryv1.DeleteMigrationJobRequest{Name: job.GetName()}))

	_, err := e.inv.ReleaseL3NetworkAddress(c, &ferryv1.ReleaseL3NetworkAddressRequest{Name: "l3Networks/net1", Ip: "10.0.0.7"})
	wantCode(t, err, codes.FailedPrecondition, "ip: l3Networks/net1 reserves no address 10.0.0.7 for a migrated VM (it reserves 10.0.0.2)")
	_, err = e.inv.ReleaseL3NetworkAddress(c, &ferryv1.ReleaseL3NetworkAddressRequest{Name: "l3Networks/net1", Ip: "ten"})
	wantCode(t, err, codes.InvalidArgument, `ip: "ten" is not an IP address`)
	_, err = e.inv.ReleaseL3NetworkAddress(c, &ferryv1.ReleaseL3NetworkAddressRequest{Name: "l3Networks/nope", Ip: "10.0.0.2"})
	wantCode(t, err, codes.NotFound, "name: l3Networks/nope not found")

	n := must[*ferryv1.ReleaseL3NetworkAddressResponse](t)(e.inv.ReleaseL3NetworkAddress(c,
		&ferryv1.ReleaseL3NetworkAddressRequest{Name: "l3Networks/net1", Ip: "10.0.0.2"})).GetL3Network()
	if len(n.GetReservations()) != 0 {
		t.Fatalf("reservations after release = %v", n.GetReservations())
	}
	again := must[*ferryv1.CreateMigrationJobsResponse](t)(e.jobs.CreateMigrationJobs(c, jobsReqWith(func(r *ferryv1.CreateMigrationJobsRequest) {
		r.Jobs[0].SourceVm, r.Jobs[0].Target.VmName = "vm-again", "target-again"
	}))).GetJobs()[0]
	if ip := again.GetTarget().GetNics()[0].GetIp(); ip != "10.0.0.2" {
		t.Fatalf("after release the next job got %s, want 10.0.0.2", ip)
	}
}
