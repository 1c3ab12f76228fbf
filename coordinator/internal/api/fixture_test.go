package api

import (
	"fmt"

	"google.golang.org/protobuf/proto"

	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

const (
	testSecret = "s3cret-Pa55word"
	gib        = int64(1) << 30
)

// seed creates, mostly through the API, the target inventory and sources the tests share:
// cluster c1 with hosts kvm1, vm1 and spare, nfs and local storage,
// network net1 (10.0.0.1-10.0.0.20, gateway 10.0.0.1), a password
// credential, a kvm and a vmware source, and a server of each type.
func (e *env) seed() {
	t := e.t
	c := ctx(t)
	for _, h := range []string{"kvm1", "vm1", "spare"} {
		e.apply(&ledgerv1.Command{Op: &ledgerv1.Command_PutHost{PutHost: &ledgerv1.PutHost{Host: &ferryv1.Host{
			Name: "hosts/" + h, Cluster: "clusters/c1", Connected: h == "kvm1"}}}})
	}
	must[*ferryv1.Cluster](t)(e.inv.CreateCluster(c, &ferryv1.CreateClusterRequest{Cluster: &ferryv1.Cluster{Name: "clusters/c1"}}))
	for _, ps := range []*ferryv1.PrimaryStorage{
		{Name: "primaryStorages/nfs", Cluster: "clusters/c1", Type: ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_NFS, Path: "/mnt/nfs"},
		{Name: "primaryStorages/local", Cluster: "clusters/c1", Type: ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_LOCAL, Path: "/var/lib/ferry"},
	} {
		must[*ferryv1.PrimaryStorage](t)(e.inv.CreatePrimaryStorage(c, &ferryv1.CreatePrimaryStorageRequest{PrimaryStorage: ps}))
	}
	must[*ferryv1.L3Network](t)(e.inv.CreateL3Network(c, &ferryv1.CreateL3NetworkRequest{L3Network: &ferryv1.L3Network{
		Name: "l3Networks/net1", Cluster: "clusters/c1", Bridge: "br0",
		IpRangeStart: "10.0.0.1", IpRangeEnd: "10.0.0.20", Gateway: "10.0.0.1", PrefixLength: 24}}))
	must[*ferryv1.Credential](t)(e.sources.CreateCredential(c, &ferryv1.CreateCredentialRequest{Credential: &ferryv1.Credential{
		Name: "credentials/pw", Type: ferryv1.CredentialType_CREDENTIAL_TYPE_PASSWORD, Secret: testSecret}}))
	for _, src := range []*ferryv1.Source{
		{Name: "sources/kvm", Type: ferryv1.Platform_PLATFORM_KVM, Kvm: &ferryv1.KvmConnection{Address: "192.0.2.10", Credential: "credentials/pw"}},
		{Name: "sources/vc", Type: ferryv1.Platform_PLATFORM_VMWARE, Vcenter: &ferryv1.VCenterConnection{
			Address: "vc.example.com", User: "administrator@vsphere.local", Credential: "credentials/pw"}},
	} {
		must[*ferryv1.Source](t)(e.sources.CreateSource(c, &ferryv1.CreateSourceRequest{Source: src}))
	}
	for _, ms := range []*ferryv1.MigrationServer{
		{Name: "migrationServers/kvm", Host: "hosts/kvm1", Type: ferryv1.Platform_PLATFORM_KVM, CachePath: "/var/cache/ferry"},
		{Name: "migrationServers/vmw", Host: "hosts/vm1", Type: ferryv1.Platform_PLATFORM_VMWARE, CachePath: "/var/cache/ferry"},
	} {
		must[*ferryv1.MigrationServer](t)(e.servers.CreateMigrationServer(c, &ferryv1.CreateMigrationServerRequest{MigrationServer: ms}))
	}
}

// spec is a valid VM of a batch; its NIC has no IP, so one is allocated.
func spec(i int) *ferryv1.MigrationJobSpec {
	return &ferryv1.MigrationJobSpec{
		SourceVm: fmt.Sprintf("vm-%d", i),
		Target: &ferryv1.TargetVm{
			VmName: fmt.Sprintf("target-%d", i), Cluster: "clusters/c1", PrimaryStorage: "primaryStorages/nfs",
			Cpus: 2, MemoryBytes: 2 * gib, CdromCount: 1,
			Disks: []*ferryv1.TargetDisk{{SourceDisk: "vda", SizeBytes: 10 * gib}},
			Nics:  []*ferryv1.TargetNic{{SourceMac: fmt.Sprintf("52:54:00:00:%02x:%02x", i/256, i%256), L3Network: "l3Networks/net1"}},
		},
	}
}

// jobsReq is a valid batch of n VMs from sources/kvm on migrationServers/kvm.
func jobsReq(n int) *ferryv1.CreateMigrationJobsRequest {
	req := &ferryv1.CreateMigrationJobsRequest{Source: "sources/kvm", MigrationServer: "migrationServers/kvm"}
	for i := range n {
		req.Jobs = append(req.Jobs, spec(i))
	}
	return req
}

// jobsReqWith is a one-VM batch changed by edit.
func jobsReqWith(edit func(*ferryv1.CreateMigrationJobsRequest)) *ferryv1.CreateMigrationJobsRequest {
	req := jobsReq(1)
	edit(req)
	return req
}

func validServer(edit func(*ferryv1.MigrationServer)) *ferryv1.CreateMigrationServerRequest {
	ms := &ferryv1.MigrationServer{Host: "hosts/spare", Type: ferryv1.Platform_PLATFORM_KVM, CachePath: "/srv/cache"}
	edit(ms)
	return &ferryv1.CreateMigrationServerRequest{MigrationServer: ms}
}

func validNetwork(edit func(*ferryv1.L3Network)) *ferryv1.CreateL3NetworkRequest {
	n := &ferryv1.L3Network{Cluster: "clusters/c1", LibvirtNetwork: "default",
		IpRangeStart: "192.168.1.10", IpRangeEnd: "192.168.1.50", Gateway: "192.168.1.1", PrefixLength: 24}
	edit(n)
	return &ferryv1.CreateL3NetworkRequest{L3Network: n}
}

func validStorage(edit func(*ferryv1.PrimaryStorage)) *ferryv1.CreatePrimaryStorageRequest {
	ps := &ferryv1.PrimaryStorage{Cluster: "clusters/c1", Type: ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_NFS, Path: "/mnt/other"}
	edit(ps)
	return &ferryv1.CreatePrimaryStorageRequest{PrimaryStorage: ps}
}

func validKVMSource(edit func(*ferryv1.Source)) *ferryv1.CreateSourceRequest {
	s := &ferryv1.Source{Type: ferryv1.Platform_PLATFORM_KVM, Kvm: &ferryv1.KvmConnection{Address: "kvm.example.com", Credential: "credentials/pw"}}
	edit(s)
	return &ferryv1.CreateSourceRequest{Source: s}
}

// startJob moves a queued job to RUNNING under epoch, as the scheduler does.
func (e *env) startJob(name string, epoch int64) {
	e.apply(&ledgerv1.Command{Op: &ledgerv1.Command_StartMigrationJob{StartMigrationJob: &ledgerv1.StartMigrationJob{
		Name: name, Host: "hosts/kvm1", Epoch: epoch}}})
}

// queuedJob puts a queued job with a fixed name and address in the ledger.
func (e *env) queuedJob(name, ip string) {
	s := spec(99)
	s.Target.Nics[0].Mac, s.Target.Nics[0].Ip = s.Target.Nics[0].SourceMac, ip
	e.apply(&ledgerv1.Command{Op: &ledgerv1.Command_CreateMigrationJobs{CreateMigrationJobs: &ledgerv1.CreateMigrationJobs{
		Jobs: []*ferryv1.MigrationJob{{Name: name, Source: "sources/kvm", MigrationServer: "migrationServers/kvm",
			SourceVm: s.SourceVm, Target: s.Target}}}}})
}

func clone[T proto.Message](m T) T { return proto.Clone(m).(T) }
