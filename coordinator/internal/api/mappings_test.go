package api

import (
	"context"
	"reflect"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// sourceVMs is the agent side of a source sync in these unit tests of the
// API: the VMs a source has, as the inventory reports them, on a vCenter
// and ESXi host of the same version.
type sourceVMs struct{ vms []*ferryv1.SourceVm }

func (s *sourceVMs) SourceInventory(context.Context, *ferryv1.Source, *ferryv1.MigrationServer) (*ferryv1.SourceInventory, error) {
	return &ferryv1.SourceInventory{
		Product: &ferryv1.SourceProduct{Version: "7.0.3", ApiType: "VirtualCenter"},
		Hosts:   []*ferryv1.SourceHost{{Id: "host-1", Name: "esx1", Version: "7.0.3"}},
		Vms:     s.vms,
	}, nil
}

func (s *sourceVMs) Connected(string) bool { return true }

func withAgents(agents Agents) envOption { return func(d *Deps) { d.Agents = agents } }

// mappingEnv is a seeded env with a second L3 network (net2) and group
// vc-map of sources/vc: "VM Network" → net1, "DSwitch-Backup" → net2.
func mappingEnv(t *testing.T, vms ...*ferryv1.SourceVm) *env {
	e := newEnv(t, true, withAgents(&sourceVMs{vms: vms}))
	e.seed()
	c := ctx(t)
	must[*ferryv1.L3Network](t)(e.inv.CreateL3Network(c, &ferryv1.CreateL3NetworkRequest{L3Network: &ferryv1.L3Network{
		Name: "l3Networks/net2", Cluster: "clusters/c1", LibvirtNetwork: "backup",
		IpRangeStart: "172.16.0.10", IpRangeEnd: "172.16.0.99", PrefixLength: 24}}))
	must[*ferryv1.NetworkMappingGroup](t)(e.mappings.CreateNetworkMappingGroup(c, &ferryv1.CreateNetworkMappingGroupRequest{
		NetworkMappingGroup: &ferryv1.NetworkMappingGroup{Name: "networkMappingGroups/vc-map", Source: "sources/vc",
			Mappings: []*ferryv1.NetworkMapping{{SourceNetwork: "VM Network", L3Network: "l3Networks/net1"},
				{SourceNetwork: "DSwitch-Backup", L3Network: "l3Networks/net2"}}}}))
	return e
}

func TestNetworkMappingGroupCRUD(t *testing.T) {
	e := mappingEnv(t)
	c := ctx(t)
	g := must[*ferryv1.NetworkMappingGroup](t)(e.mappings.GetNetworkMappingGroup(c,
		&ferryv1.GetNetworkMappingGroupRequest{Name: "networkMappingGroups/vc-map"}))
	if len(g.GetMappings()) != 2 || g.GetCreateTime() == nil || g.GetSource() != "sources/vc" {
		t.Fatalf("group = %v", g)
	}
	any := must[*ferryv1.NetworkMappingGroup](t)(e.mappings.CreateNetworkMappingGroup(c, &ferryv1.CreateNetworkMappingGroupRequest{
		NetworkMappingGroup: &ferryv1.NetworkMappingGroup{Mappings: []*ferryv1.NetworkMapping{{SourceNetwork: " default ", L3Network: "l3Networks/net1"}}}}))
	if any.GetMappings()[0].GetSourceNetwork() != "default" {
		t.Errorf("source network not trimmed: %v", any)
	}
	list := func(source string) int {
		return len(must[*ferryv1.ListNetworkMappingGroupsResponse](t)(e.mappings.ListNetworkMappingGroups(c,
			&ferryv1.ListNetworkMappingGroupsRequest{Source: source})).GetNetworkMappingGroups())
	}
	if all, vc, kvm := list(""), list("sources/vc"), list("sources/kvm"); all != 2 || vc != 2 || kvm != 1 {
		t.Errorf("listed %d groups, %d for sources/vc, %d for sources/kvm; want 2, 2, 1", all, vc, kvm)
	}
	up := must[*ferryv1.NetworkMappingGroup](t)(e.mappings.UpdateNetworkMappingGroup(c, &ferryv1.UpdateNetworkMappingGroupRequest{
		NetworkMappingGroup: &ferryv1.NetworkMappingGroup{Name: g.GetName(), DisplayName: "ignored",
			Mappings: []*ferryv1.NetworkMapping{{SourceNetwork: "VM Network", L3Network: "l3Networks/net2"}}},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"mappings"}}}))
	if up.GetDisplayName() != "" || len(up.GetMappings()) != 1 || up.GetMappings()[0].GetL3Network() != "l3Networks/net2" ||
		!proto.Equal(up.GetCreateTime(), g.GetCreateTime()) || !up.GetUpdateTime().AsTime().After(g.GetUpdateTime().AsTime()) {
		t.Fatalf("updated group = %v", up)
	}
	_, err := e.inv.DeleteL3Network(c, &ferryv1.DeleteL3NetworkRequest{Name: "l3Networks/net2"})
	wantCode(t, err, codes.FailedPrecondition, "network mapping group networkMappingGroups/vc-map maps to L3 network l3Networks/net2")
	_, err = e.sources.DeleteSource(c, &ferryv1.DeleteSourceRequest{Name: "sources/vc"})
	wantCode(t, err, codes.FailedPrecondition, "network mapping group networkMappingGroups/vc-map is for source sources/vc")
	must[*emptypb.Empty](t)(e.mappings.DeleteNetworkMappingGroup(c, &ferryv1.DeleteNetworkMappingGroupRequest{Name: g.GetName()}))
	must[*emptypb.Empty](t)(e.inv.DeleteL3Network(c, &ferryv1.DeleteL3NetworkRequest{Name: "l3Networks/net2"}))
	_, err = e.mappings.GetNetworkMappingGroup(c, &ferryv1.GetNetworkMappingGroupRequest{Name: g.GetName()})
	wantCode(t, err, codes.NotFound, "")
}

func TestNetworkMappingGroupBadInputs(t *testing.T) {
	e := mappingEnv(t)
	create := func(g *ferryv1.NetworkMappingGroup) error {
		_, err := e.mappings.CreateNetworkMappingGroup(ctx(t), &ferryv1.CreateNetworkMappingGroupRequest{NetworkMappingGroup: g})
		return err
	}
	m := func(src, l3 string) *ferryv1.NetworkMapping {
		return &ferryv1.NetworkMapping{SourceNetwork: src, L3Network: l3}
	}
	tests := []struct {
		name   string
		g      *ferryv1.NetworkMappingGroup
		code   codes.Code
		prefix string
	}{
		{"no mappings", &ferryv1.NetworkMappingGroup{}, codes.InvalidArgument, "network_mapping_group.mappings: at least one"},
		{"bad name", &ferryv1.NetworkMappingGroup{Name: "groups/x", Mappings: []*ferryv1.NetworkMapping{m("a", "l3Networks/net1")}},
			codes.InvalidArgument, "network_mapping_group.name:"},
		{"empty source network", &ferryv1.NetworkMappingGroup{Mappings: []*ferryv1.NetworkMapping{m(" ", "l3Networks/net1")}},
			codes.InvalidArgument, "network_mapping_group.mappings[0].source_network: required"},
		{"source network twice", &ferryv1.NetworkMappingGroup{Mappings: []*ferryv1.NetworkMapping{m("a", "l3Networks/net1"), m("a", "l3Networks/net2")}},
			codes.InvalidArgument, "network_mapping_group.mappings[1].source_network: \"a\" is also mappings[0]"},
		{"L3 network malformed", &ferryv1.NetworkMappingGroup{Mappings: []*ferryv1.NetworkMapping{m("a", "net1")}},
			codes.InvalidArgument, "network_mapping_group.mappings[0].l3_network:"},
		{"L3 network missing", &ferryv1.NetworkMappingGroup{Mappings: []*ferryv1.NetworkMapping{m("a", "l3Networks/nope")}},
			codes.NotFound, "network_mapping_group.mappings[0].l3_network: l3Networks/nope not found"},
		{"source missing", &ferryv1.NetworkMappingGroup{Source: "sources/nope", Mappings: []*ferryv1.NetworkMapping{m("a", "l3Networks/net1")}},
			codes.NotFound, "network_mapping_group.source: sources/nope not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { wantCode(t, create(tt.g), tt.code, tt.prefix) })
	}
	_, err := e.mappings.UpdateNetworkMappingGroup(ctx(t), &ferryv1.UpdateNetworkMappingGroupRequest{
		NetworkMappingGroup: &ferryv1.NetworkMappingGroup{Name: "networkMappingGroups/vc-map", Source: "sources/kvm"},
		UpdateMask:          &fieldmaskpb.FieldMask{Paths: []string{"source"}}})
	wantCode(t, err, codes.InvalidArgument, "update_mask.paths[0]: \"source\" cannot be updated")
}

// windowsSourceVM is a VMware VM with a UEFI Windows guest, two SCSI
// disks, four CD-ROM drives and two NICs with guest addresses.
func windowsSourceVM(id, ip string) *ferryv1.SourceVm {
	return &ferryv1.SourceVm{
		Id: id, Name: "win-" + id, Cpus: 4, MemoryBytes: 4 * gib, Firmware: ferryv1.Firmware_FIRMWARE_UEFI, CdromCount: 4,
		GuestOsId: "windows2019srvNext_64Guest",
		Disks:     []*ferryv1.SourceDisk{{Target: "2000", CapacityBytes: 20 * gib, Bus: "scsi"}, {Target: "2001", CapacityBytes: gib, Bus: "scsi"}},
		Nics: []*ferryv1.SourceNic{
			{Mac: "00:50:56:01:02:03", Portgroup: "VM Network", IpAddresses: []string{"fe80::250:56ff:fe01:203", ip}},
			{Mac: "00:50:56:01:02:04", Portgroup: "DSwitch-Backup", IpAddresses: []string{"172.16.0.42"}},
		},
	}
}

func fillReq(vm string, edit func(*ferryv1.MigrationJobSpec)) *ferryv1.CreateMigrationJobsRequest {
	spec := &ferryv1.MigrationJobSpec{SourceVm: vm, Options: &ferryv1.MigrationOptions{UseSourceNicAddress: true},
		Target: &ferryv1.TargetVm{Cluster: "clusters/c1", PrimaryStorage: "primaryStorages/nfs"}}
	if edit != nil {
		edit(spec)
	}
	return &ferryv1.CreateMigrationJobsRequest{Source: "sources/vc", MigrationServer: "migrationServers/vmw",
		NetworkMappingGroup: "networkMappingGroups/vc-map", Jobs: []*ferryv1.MigrationJobSpec{spec}}
}

func TestCreateJobsFillsIncompleteSpecs(t *testing.T) {
	e := mappingEnv(t, windowsSourceVM("vm-77", "10.0.0.7"), windowsSourceVM("vm-78", "10.0.0.7"))
	c := ctx(t)
	job := must[*ferryv1.CreateMigrationJobsResponse](t)(e.jobs.CreateMigrationJobs(c, fillReq("vm-77", nil))).GetJobs()[0]
	want := &ferryv1.TargetVm{
		VmName: "win-vm-77", Cluster: "clusters/c1", PrimaryStorage: "primaryStorages/nfs", Cpus: 4, MemoryBytes: 4 * gib,
		CdromCount: 3, Firmware: ferryv1.Firmware_FIRMWARE_UEFI, OsType: ferryv1.OsType_OS_TYPE_WINDOWS, DiskBus: ferryv1.DiskBus_DISK_BUS_SATA,
		Disks: []*ferryv1.TargetDisk{{SourceDisk: "2000", DisplayName: "root", SizeBytes: 20 * gib},
			{SourceDisk: "2001", DisplayName: "data-2001", SizeBytes: gib}},
		Nics: []*ferryv1.TargetNic{
			{SourceMac: "00:50:56:01:02:03", L3Network: "l3Networks/net1", Mac: "00:50:56:01:02:03", Ip: "10.0.0.7"},
			{SourceMac: "00:50:56:01:02:04", L3Network: "l3Networks/net2", Mac: "00:50:56:01:02:04", Ip: "172.16.0.42"},
		},
	}
	if !proto.Equal(job.GetTarget(), want) {
		t.Fatalf("job target\n got %v\nwant %v", job.GetTarget(), want)
	}
	// The source address is the reservation: another VM claiming it is refused.
	_, err := e.jobs.CreateMigrationJobs(c, fillReq("vm-78", nil))
	wantCode(t, err, codes.FailedPrecondition, "")
	if got := err.Error(); !strings.Contains(got, "10.0.0.7") {
		t.Fatalf("second VM with the same address: %v", err)
	}
}

func TestCreateJobsFillErrors(t *testing.T) {
	e := mappingEnv(t, windowsSourceVM("vm-77", "10.0.0.7"), windowsSourceVM("vm-79", "10.9.9.9"))
	c := ctx(t)
	must[*ferryv1.NetworkMappingGroup](t)(e.mappings.CreateNetworkMappingGroup(c, &ferryv1.CreateNetworkMappingGroupRequest{
		NetworkMappingGroup: &ferryv1.NetworkMappingGroup{Name: "networkMappingGroups/kvm-map", Source: "sources/kvm",
			Mappings: []*ferryv1.NetworkMapping{{SourceNetwork: "default", L3Network: "l3Networks/net1"}}}}))
	must[*ferryv1.NetworkMappingGroup](t)(e.mappings.CreateNetworkMappingGroup(c, &ferryv1.CreateNetworkMappingGroupRequest{
		NetworkMappingGroup: &ferryv1.NetworkMappingGroup{Name: "networkMappingGroups/half",
			Mappings: []*ferryv1.NetworkMapping{{SourceNetwork: "VM Network", L3Network: "l3Networks/net1"}}}}))
	tests := []struct {
		name   string
		req    *ferryv1.CreateMigrationJobsRequest
		code   codes.Code
		prefix string
	}{
		{"group of another source", withGroup(fillReq("vm-77", nil), "networkMappingGroups/kvm-map"), codes.FailedPrecondition,
			"network_mapping_group: networkMappingGroups/kvm-map maps the networks of sources/kvm, not of sources/vc"},
		{"portgroup the group does not map", withGroup(fillReq("vm-77", nil), "networkMappingGroups/half"), codes.FailedPrecondition,
			"jobs[0].target.nics[1].l3_network: source NIC 00:50:56:01:02:04 is on DSwitch-Backup, which networkMappingGroups/half does not map"},
		{"missing group", withGroup(fillReq("vm-77", nil), "networkMappingGroups/nope"), codes.NotFound, "network_mapping_group:"},
		{"malformed group", withGroup(fillReq("vm-77", nil), "nope"), codes.InvalidArgument, "network_mapping_group:"},
		{"VM the source lacks", fillReq("vm-404", nil), codes.NotFound, "jobs[0].source_vm: VM \"vm-404\" at sources/vc not found"},
		{"MAC set against use_source_nic_address", fillReq("vm-77", func(s *ferryv1.MigrationJobSpec) {
			s.Target.Nics = []*ferryv1.TargetNic{{SourceMac: "00:50:56:01:02:03", Mac: "52:54:00:aa:bb:cc", L3Network: "l3Networks/net1"}}
		}), codes.InvalidArgument, "jobs[0].target.nics[0].mac: 52:54:00:aa:bb:cc differs from source_mac 00:50:56:01:02:03"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.jobs.CreateMigrationJobs(c, tt.req)
			wantCode(t, err, tt.code, tt.prefix)
		})
	}
	if n := len(e.ledger.Jobs(ledger.JobFilter{})); n != 0 {
		t.Errorf("%d jobs made by refused requests", n)
	}
}

// A source address outside the L3 network's range (or none at all) is
// not an error: the NIC gets an address from the range, the preview says
// why, and the NIC with a usable address keeps its own.
func TestFillAllocatesWhenTheSourceAddressIsUnusable(t *testing.T) {
	e := mappingEnv(t, windowsSourceVM("vm-79", "10.9.9.9"))
	c := ctx(t)
	req := fillReq("vm-79", nil)
	p := must[*ferryv1.PreviewMigrationJobsResponse](t)(e.jobs.PreviewMigrationJobs(c, &ferryv1.PreviewMigrationJobsRequest{
		Source: req.GetSource(), MigrationServer: req.GetMigrationServer(), Jobs: req.GetJobs(), NetworkMappingGroup: req.GetNetworkMappingGroup()}))
	wantNotes := []string{"jobs[0].target.nics[0].ip: source NIC 00:50:56:01:02:03 has fe80::250:56ff:fe01:203, 10.9.9.9, none inside the range " +
		"10.0.0.1-10.0.0.20 of l3Networks/net1; an address from the range of l3Networks/net1 is allocated instead (options.use_source_nic_address)"}
	if !reflect.DeepEqual(p.GetNotes(), wantNotes) || len(p.GetFailedChecks()) != 0 {
		t.Fatalf("preview notes = %q, failed checks %q; want notes %q", p.GetNotes(), p.GetFailedChecks(), wantNotes)
	}
	wantNICs := []*ferryv1.TargetNic{
		{SourceMac: "00:50:56:01:02:03", L3Network: "l3Networks/net1", Mac: "00:50:56:01:02:03", Ip: "10.0.0.2"}, // .1 is the gateway
		{SourceMac: "00:50:56:01:02:04", L3Network: "l3Networks/net2", Mac: "00:50:56:01:02:04", Ip: "172.16.0.42"},
	}
	for _, got := range [][]*ferryv1.TargetNic{p.GetJobs()[0].GetTarget().GetNics(),
		must[*ferryv1.CreateMigrationJobsResponse](t)(e.jobs.CreateMigrationJobs(c, req)).GetJobs()[0].GetTarget().GetNics()} {
		if len(got) != 2 || !proto.Equal(got[0], wantNICs[0]) || !proto.Equal(got[1], wantNICs[1]) {
			t.Fatalf("nics = %v, want %v", got, wantNICs)
		}
	}
}

func withGroup(req *ferryv1.CreateMigrationJobsRequest, g string) *ferryv1.CreateMigrationJobsRequest {
	req.NetworkMappingGroup = g
	return req
}
