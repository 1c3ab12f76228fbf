package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// world is everything a migration needs: libvirtd, a source host behind
// sshd, a coordinator, an agent, and the target inventory in the ledger.
type world struct {
	t          testing.TB
	id         string
	lv         *testenv.Libvirt
	sshd       *testenv.SSHD
	f          *ferry
	host       string
	cacheDir   string
	storageDir string
	netName    string
	l3Range    [3]string
	// sshHost and sshPort are where sources point: sshd, or sourceProxy.
	sshHost     string
	sshPort     int
	sourceProxy *testenv.Proxy
	// migrationCIDR is given to the migration server.
	migrationCIDR string
	// coordinatorProxy, when asked for, is where the agent reaches the
	// coordinator.
	coordinatorProxy *testenv.Proxy
	// resource names
	cluster, storage, l3, cred, source, server string
}

func randID() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func newWorld(t testing.TB) *world { return newWorldWith(t, worldOptions{}) }

// worldOptions change what newWorldWith builds.
type worldOptions struct {
	// coordinatorArgs are added to each coordinator's command line.
	coordinatorArgs []string
	// agentArgs are added to the agent's command line.
	agentArgs []string
	// sourceProxy puts a testenv.Proxy between the agent and the source's
	// sshd; the source resource names the proxy.
	sourceProxy bool
	// coordinatorProxy puts a testenv.Proxy between the agent and the
	// coordinator.
	coordinatorProxy bool
	// coordinators > 1 runs a cluster of that many coordinator processes.
	coordinators int
}

func newWorldWith(t testing.TB, opts worldOptions) *world {
	t.Helper()
	testenv.RequireRoot(t)
	w := &world{t: t, id: randID(), lv: testenv.RequireLibvirt(t)}
	w.sshd = testenv.StartSSHD(t, testenv.SSHDOptions{PasswordUser: testenv.TestUser, Password: testenv.TestPassword})
	w.sshHost, w.sshPort = w.sshd.Host, w.sshd.Port
	if opts.sourceProxy {
		w.sourceProxy = testenv.StartProxy(t, w.sshd.Addr)
		w.sshHost, w.sshPort = w.sourceProxy.Host(), w.sourceProxy.Port()
	}
	if opts.coordinators > 1 {
		w.f = startCluster(t, opts.coordinators, opts.coordinatorArgs...)
	} else {
		w.f = startFerry(t, opts.coordinatorArgs...)
	}
	w.f.agentArgs = opts.agentArgs
	if opts.coordinatorProxy {
		w.coordinatorProxy = testenv.StartProxy(t, w.f.addr)
		w.f.agentCoordinators = w.coordinatorProxy.Addr
	}
	w.host = "e2e-" + w.id
	w.f.agentCluster = w.clusterName()
	w.cacheDir = t.TempDir()
	w.storageDir = filepath.Join(testenv.ImagesDir, "ferry-e2e-"+w.id)
	if err := os.MkdirAll(w.storageDir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(w.storageDir) })
	w.createNetwork()
	w.f.startAgent(w.host, w.cacheDir)
	w.createTargetInventory()
	return w
}

// createNetwork makes a transient libvirt network for the target NICs
// (libvirtNetwork). It is made on w.lv, or on each of on (the hosts' own
// libvirtds), the first of which decides the subnet.
func (w *world) createNetwork(on ...*testenv.Libvirt) {
	if len(on) == 0 {
		on = []*testenv.Libvirt{w.lv}
	}
	w.netName = "ferry-e2e-" + w.id
	octet := libvirtNetwork(w.t, on, w.netName, "vbr"+w.id)
	w.l3Range = [3]string{fmt.Sprintf("10.%d.0.10", octet), fmt.Sprintf("10.%d.0.99", octet), fmt.Sprintf("10.%d.0.1", octet)}
}

// libvirtNetwork makes a transient libvirt network called name on the
// bridge, on a 10.N.0.0/24 subnet no other network of the host uses yet
// (DHCP from .100 to .200), on each of on (the first decides the subnet),
// destroyed when the test ends. It returns N.
func libvirtNetwork(t testing.TB, on []*testenv.Libvirt, name, bridge string) int {
	t.Helper()
	file := filepath.Join(t.TempDir(), "net.xml")
	var err error
	for attempt := 0; attempt < 10; attempt++ {
		b := make([]byte, 1)
		_, _ = rand.Read(b)
		octet := 100 + int(b[0])%100
		xml := fmt.Sprintf(`<network><name>%s</name><bridge name='%s'/>
<ip address='10.%d.0.1' netmask='255.255.255.0'><dhcp><range start='10.%d.0.100' end='10.%d.0.200'/></dhcp></ip></network>`,
			name, bridge, octet, octet, octet)
		must(t, os.WriteFile(file, []byte(xml), 0o644))
		if _, err = on[0].TryVirsh("net-create", file); err != nil {
			continue // the subnet is taken (another test's network)
		}
		t.Cleanup(func() { _, _ = on[0].TryVirsh("net-destroy", name) })
		for _, lv := range on[1:] {
			if _, err := lv.TryVirsh("net-create", file); err != nil {
				t.Fatalf("create the test network on %s: %v", lv.URI, err)
			}
		}
		return octet
	}
	t.Fatalf("create the test network %s: %v", name, err)
	return 0
}

func (w *world) createTargetInventory() {
	t, c := w.t, w.f.client
	inv, srcs, srvs := c.TargetInventory(), c.Sources(), c.MigrationServers()
	cl, err := inv.CreateCluster(ctx(t, 10*time.Second), &ferryv1.CreateClusterRequest{Cluster: &ferryv1.Cluster{Name: w.clusterName(), DisplayName: "e2e"}})
	must(t, err)
	w.cluster = cl.GetName()
	// Every VM on the migration server's own host, as the tests written
	// before placement expect; placement_test.go sets another strategy.
	_, err = c.Settings().UpdateSettings(ctx(t, 10*time.Second), &ferryv1.UpdateSettingsRequest{
		Settings:   &ferryv1.Settings{HostAllocationStrategy: ferryv1.HostAllocationStrategy_HOST_ALLOCATION_STRATEGY_MIGRATION_SERVER},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"host_allocation_strategy"}}})
	must(t, err)
	ps, err := inv.CreatePrimaryStorage(ctx(t, 10*time.Second), &ferryv1.CreatePrimaryStorageRequest{PrimaryStorage: &ferryv1.PrimaryStorage{
		Cluster: w.cluster, Type: ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_LOCAL, Path: w.storageDir}})
	must(t, err)
	w.storage = ps.GetName()
	n, err := inv.CreateL3Network(ctx(t, 10*time.Second), &ferryv1.CreateL3NetworkRequest{L3Network: &ferryv1.L3Network{
		Cluster: w.cluster, LibvirtNetwork: w.netName, IpRangeStart: w.l3Range[0], IpRangeEnd: w.l3Range[1],
		Gateway: w.l3Range[2], PrefixLength: 24}})
	must(t, err)
	w.l3 = n.GetName()
	cr, err := srcs.CreateCredential(ctx(t, 10*time.Second), &ferryv1.CreateCredentialRequest{Credential: &ferryv1.Credential{
		Type: ferryv1.CredentialType_CREDENTIAL_TYPE_PRIVATE_KEY, Secret: string(w.sshd.ClientKeyPEM)}})
	must(t, err)
	w.cred = cr.GetName()
	w.source = w.createSource(w.cred, "root", w.sshd.HostKey)
	ms, err := srvs.CreateMigrationServer(ctx(t, 10*time.Second), &ferryv1.CreateMigrationServerRequest{MigrationServer: &ferryv1.MigrationServer{
		Host: "hosts/" + w.host, Type: ferryv1.Platform_PLATFORM_KVM, CachePath: w.cacheDir, MigrationCidr: w.migrationCIDR}})
	must(t, err)
	w.server = ms.GetName()
}

// clusterName is the world's target cluster, which its agents name.
func (w *world) clusterName() string { return "clusters/e2e-" + w.id }

func (w *world) createSource(cred, user, hostKey string) string {
	s, err := w.f.client.Sources().CreateSource(ctx(w.t, 10*time.Second), &ferryv1.CreateSourceRequest{Source: &ferryv1.Source{
		Type: ferryv1.Platform_PLATFORM_KVM, Kvm: &ferryv1.KvmConnection{
			Address: w.sshHost, SshPort: int32(w.sshPort), User: user, Credential: cred, HostKey: hostKey}}})
	must(w.t, err)
	return s.GetName()
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// sourceVM finds a VM through ListSourceVMs after a sync, as an operator
// would.
// A refresh refused because no migration server's agent is connected is
// asked again for a while: on a loaded machine a session that had just
// opened was once found closed again (a missed heartbeat) by the sync.
func (w *world) sourceVM(source, name string) *ferryv1.SourceVm {
	var resp *ferryv1.ListSourceVMsResponse
	var err error
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(time.Second) {
		resp, err = w.f.client.Sources().ListSourceVMs(ctx(w.t, 60*time.Second), &ferryv1.ListSourceVMsRequest{Source: source, Refresh: true,
			NameContains: name})
		if err == nil || status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "connected agent") ||
			time.Now().After(deadline) {
			break
		}
		w.t.Logf("ListSourceVMs %s: %v; asking again", source, err)
	}
	must(w.t, err)
	for _, vm := range resp.GetVms() {
		if vm.GetName() == name {
			return vm
		}
	}
	w.t.Fatalf("ListSourceVMs has no %s: %v", name, resp.GetVms())
	return nil
}

// spec turns a source VM into a job: every disk kept, every NIC on the
// test network, the target named after the source.
func (w *world) spec(vm *ferryv1.SourceVm, opts *ferryv1.MigrationOptions) *ferryv1.MigrationJobSpec {
	// The world's id in the name: the simulator's VMs have the same names
	// in every test, and the tests define their targets side by side.
	tgt := &ferryv1.TargetVm{
		VmName: vm.GetName() + "-migrated-" + w.id, Cluster: w.cluster, PrimaryStorage: w.storage,
		Cpus: vm.GetCpus(), MemoryBytes: vm.GetMemoryBytes(), CdromCount: vm.GetCdromCount(), Firmware: vm.GetFirmware(),
	}
	for i, d := range vm.GetDisks() {
		tgt.Disks = append(tgt.Disks, &ferryv1.TargetDisk{SourceDisk: d.GetTarget(), SizeBytes: d.GetCapacityBytes(),
			DisplayName: []string{"root", "data"}[min(i, 1)] + "-" + d.GetTarget()})
	}
	for _, n := range vm.GetNics() {
		tgt.Nics = append(tgt.Nics, &ferryv1.TargetNic{SourceMac: n.GetMac(), L3Network: w.l3})
	}
	w.t.Cleanup(func() {
		// A job still running when the test ends (it failed) would define
		// the domain after it was removed: the agents go first.
		w.f.stopAgents()
		w.removeDomain(tgt.GetVmName())
	})
	return &ferryv1.MigrationJobSpec{SourceVm: vm.GetName(), Target: tgt, Options: opts}
}

func (w *world) removeDomain(name string) {
	_, _ = w.lv.TryVirsh("destroy", name)
	_, _ = w.lv.TryVirsh("undefine", "--nvram", name)
}

// createJob submits one job and returns its name.
func (w *world) createJob(spec *ferryv1.MigrationJobSpec) string {
	resp, err := w.f.client.Jobs().CreateMigrationJobs(ctx(w.t, 10*time.Second), &ferryv1.CreateMigrationJobsRequest{
		Source: w.source, MigrationServer: w.server, Jobs: []*ferryv1.MigrationJobSpec{spec}})
	must(w.t, err)
	return resp.GetJobs()[0].GetName()
}

func (w *world) job(name string) *ferryv1.MigrationJob {
	resp, err := w.f.client.Jobs().GetMigrationJob(ctx(w.t, 10*time.Second), &ferryv1.GetMigrationJobRequest{Name: name})
	must(w.t, err)
	return resp
}

// waitJob polls until the job satisfies cond.
func (w *world) waitJob(name string, timeout time.Duration, what string, cond func(*ferryv1.MigrationJob) bool) *ferryv1.MigrationJob {
	w.t.Helper()
	var j *ferryv1.MigrationJob
	testkit.WaitFor(w.t, timeout, what, func() bool {
		j = w.job(name)
		return cond(j)
	})
	return j
}

func terminal(j *ferryv1.MigrationJob) bool {
	switch j.GetState() {
	case ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED, ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED,
		ferryv1.MigrationJobState_MIGRATION_JOB_STATE_CANCELLED:
		return true
	}
	return false
}

// volume is where local storage keeps a job's disk.
func (w *world) volume(job, disk string) string {
	return filepath.Join(w.storageDir, path.Base(job), disk+".qcow2")
}

// compare runs qemu-img compare (byte for byte, holes read as zeroes).
func compare(t testing.TB, src, dst string) {
	t.Helper()
	out, err := exec.Command("qemu-img", "compare", "-U", src, dst).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img compare %s %s: %v: %s", src, dst, err, out)
	}
}

// leftovers lists what a backup may leave on the source host.
func leftovers(vm *testenv.TestVM) []string {
	var out []string
	for _, dir := range []string{"/var/lib/libvirt/qemu", testenv.ImagesDir} {
		m, _ := filepath.Glob(filepath.Join(dir, "ferry-backup-"+vm.UUID+"*"))
		out = append(out, m...)
	}
	return out
}
