package main

import (
	"testing"
)

func TestRequestToFillFromTheSource(t *testing.T) {
	jf := &jobFlags{source: "vc", server: "vmw-1", vm: "vm-1042", cluster: "prod", store: "nfs-1", group: "dc1",
		useSourceNICAddress: true, firmware: &enumFlag{}, osType: &enumFlag{}, diskBus: &enumFlag{}, compression: &enumFlag{}}
	req, err := jf.request()
	if err != nil {
		t.Fatal(err)
	}
	spec := req.GetJobs()[0]
	if req.GetNetworkMappingGroup() != "networkMappingGroups/dc1" || !spec.GetOptions().GetUseSourceNicAddress() ||
		spec.GetTarget().GetVmName() != "" || spec.GetTarget().GetCluster() != "clusters/prod" {
		t.Fatalf("request %v: want the group, use_source_nic_address, and no vm_name (the source's name fills it)", req)
	}
	jf.group, jf.targetName = "", ""
	if req, _ = jf.request(); req.GetJobs()[0].GetTarget().GetVmName() != "vm-1042" || req.GetNetworkMappingGroup() != "" {
		t.Fatalf("request from flags alone %v: want vm_name --vm", req)
	}
}
