package vcsimtest

import (
	"testing"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/simulator/esx"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/types"
)

// The simulator's vCenter reports version 6.5.0 in its About while its
// ESXi hosts report 8.0.2 (esx.HostConfigInfo): a pair Ferry refuses.
// Start aligns the vCenter with its hosts; tests change either with
// SetVCenterVersion and SetHostVersion.

// alignVersions makes the vCenter report its hosts' version.
func (s *Sim) alignVersions() { s.SetVCenterVersion(esx.HostConfigInfo.Product.Version) }

// SetVCenterVersion sets the version the vCenter's About reports (the API
// version stays, so clients keep speaking the same protocol).
func (s *Sim) SetVCenterVersion(version string) {
	si := s.Model.Map().Get(vim25.ServiceInstance).(*simulator.ServiceInstance)
	si.Content.About.Version = version
	si.Content.About.FullName = "VMware vCenter Server " + version + " build-" + si.Content.About.Build
}

// VCenterVersion is the version the vCenter's About reports.
func (s *Sim) VCenterVersion() string {
	return s.Model.Map().Get(vim25.ServiceInstance).(*simulator.ServiceInstance).Content.About.Version
}

// SetHostVersion sets the ESXi version of the host named name, in its
// summary and its config, on that host alone (the simulator's hosts share
// one product value).
func (s *Sim) SetHostVersion(t testing.TB, name, version string) {
	t.Helper()
	h := s.Host(t, name)
	p := *h.Summary.Config.Product
	p.Version = version
	p.FullName = "VMware ESXi " + version + " build-" + p.Build
	h.Summary.Config.Product = &p
	if h.Config != nil {
		h.Config.Product = p
	}
}

// Host is the simulator's host named name.
func (s *Sim) Host(t testing.TB, name string) *simulator.HostSystem {
	t.Helper()
	for _, e := range s.Model.Map().All("HostSystem") {
		if h, ok := e.(*simulator.HostSystem); ok && h.Name == name {
			return h
		}
	}
	t.Fatalf("vcsim has no host %s", name)
	return nil
}

// Hosts are the simulator's hosts.
func (s *Sim) Hosts() []*simulator.HostSystem {
	var out []*simulator.HostSystem
	for _, e := range s.Model.Map().All("HostSystem") {
		out = append(out, e.(*simulator.HostSystem))
	}
	return out
}

// HostOf is the host VM ref runs on.
func (s *Sim) HostOf(ref types.ManagedObjectReference) *simulator.HostSystem {
	vm := s.Model.Map().Get(ref).(*simulator.VirtualMachine)
	return s.Model.Map().Get(*vm.Runtime.Host).(*simulator.HostSystem)
}
