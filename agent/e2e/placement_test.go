package e2e

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"
	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// placeWorld is a target cluster of three hosts:
//
//	root namespace: the coordinator on 172.N.2.1, the machine's libvirtd
//	    (the source's VMs) and the source's sshd, and host "a", the
//	    migration server
//	host "b" (netns): 172.N.2.2, a veth to the root namespace
//	host "c" (netns): 172.N.3.2, a veth to the root namespace
//
// Each host has a libvirtd of its own (testenv.HostLibvirt: a's in the
// root network namespace, b's and c's in theirs, each with a private mount
// namespace) and local storage of its own: a directory bind-mounted over
// the storage path, in its libvirtd's view and its agent's alike, so what
// b writes there is in b's directory only and b's libvirtd starts b's
// domains from it. Each agent runs beside its host's libvirtd (its
// qemu:///system is that one's socket), with its own certificate, and
// only ever touches the volumes and domains of the jobs placed on its
// host: b and c serve theirs to a over their veth. The libvirt network of
// the target NICs is made on all three libvirtds.
type placeWorld struct {
	*world
	hosts   []string // a, b, c
	netns   map[string]*testenv.NetNS
	dev     map[string]string // each netns host's end of its veth
	addr    map[string]string // and its address
	agents  map[string]*proc
	libvirt map[string]*testenv.HostLibvirt
	storage map[string]string // each host's directory behind the storage path
}

func newPlaceWorld(t *testing.T) *placeWorld {
	t.Helper()
	testenv.RequireRoot(t)
	w := &world{t: t, id: randID(), lv: testenv.RequireLibvirt(t)}
	p := &placeWorld{world: w, netns: map[string]*testenv.NetNS{}, dev: map[string]string{}, addr: map[string]string{},
		agents: map[string]*proc{}, libvirt: map[string]*testenv.HostLibvirt{}, storage: map[string]string{}}
	octet := testenv.Subnet172(t)
	addr := func(subnet, host int) string { return fmt.Sprintf("172.%d.%d.%d", octet, subnet, host) }
	w.sshd = testenv.StartSSHD(t, testenv.SSHDOptions{PasswordUser: testenv.TestUser, Password: testenv.TestPassword})
	w.sshHost, w.sshPort = w.sshd.Host, w.sshd.Port
	base := "e2e-" + w.id
	p.hosts = []string{base + "-a", base + "-b", base + "-c"}
	for i, h := range p.hosts[1:] {
		ns := testenv.NewNetNS(t, fmt.Sprintf("fp%d-%s", i, w.id))
		p.netns[h], p.dev[h], p.addr[h] = ns, fmt.Sprintf("fp%d%sh", i, w.id), addr(2+i, 2)
		testenv.Veth(t, nil, fmt.Sprintf("fp%d%sr", i, w.id), addr(2+i, 1)+"/24", ns, p.dev[h], addr(2+i, 2)+"/24")
		ns.IP(t, "route", "add", "default", "via", addr(2+i, 1))
	}
	w.f = startFerryOn(t, addr(2, 1))
	w.host = p.hosts[0]
	w.f.agentCluster = w.clusterName()
	w.cacheDir = t.TempDir()
	w.storageDir = filepath.Join(testenv.ImagesDir, "ferry-e2e-"+w.id)
	must(t, os.MkdirAll(w.storageDir, 0o755)) // where each host mounts its own
	t.Cleanup(func() { os.RemoveAll(w.storageDir) })
	w.f.agentHosts = map[string]*testenv.HostLibvirt{}
	var lvs []*testenv.Libvirt
	for _, h := range p.hosts {
		dir := w.storageDir + "-" + h[len(h)-1:]
		must(t, os.MkdirAll(dir, 0o755))
		t.Cleanup(func() { os.RemoveAll(dir) })
		p.storage[h] = dir
		lv := testenv.StartHostLibvirt(t, h[len(h)-1:]+w.id, testenv.HostLibvirtOptions{NetNS: p.netns[h],
			Binds: [][2]string{{dir, w.storageDir}}})
		p.libvirt[h], w.f.agentHosts[h] = lv, lv
		lvs = append(lvs, &lv.Libvirt)
	}
	w.createNetwork(lvs...)
	for i, h := range p.hosts {
		var extra []string
		if i > 0 {
			extra = []string{"--migration-address", p.addr[h]}
		}
		p.agents[h] = w.f.startAgentWith(h, t.TempDir(), p.netns[h], extra...)
	}
	w.f.agents[w.host] = p.agents[w.host]
	w.createTargetInventory()
	_, err := w.f.client.Settings().UpdateSettings(ctx(t, 10*time.Second), &ferryv1.UpdateSettingsRequest{
		Settings:   &ferryv1.Settings{HostAllocationStrategy: ferryv1.HostAllocationStrategy_HOST_ALLOCATION_STRATEGY_FEWEST_RUNNING_VMS},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"host_allocation_strategy"}}})
	must(t, err)
	return p
}

// volumeOn is where host keeps a job's disk on its local storage.
func (p *placeWorld) volumeOn(host, job, disk string) string {
	return filepath.Join(p.storage[host], strings.TrimPrefix(p.volume(job, disk), p.storageDir))
}

// domainOn checks that the domain name is on host's libvirtd (running if
// running) and on no other host's.
func (p *placeWorld) domainOn(host, name string, running bool) {
	p.t.Helper()
	for _, h := range p.hosts {
		defined := slices.Contains(p.libvirt[h].Domains(p.t, false), name)
		up := slices.Contains(p.libvirt[h].Domains(p.t, true), name)
		switch {
		case h == host && !defined:
			p.t.Errorf("domain %s is not defined on the libvirtd of %s, its host", name, h)
		case h == host && up != running:
			p.t.Errorf("domain %s on %s: running %v, want %v", name, h, up, running)
		case h != host && defined:
			p.t.Errorf("domain %s is defined on the libvirtd of %s too (placed on %s)", name, h, host)
		}
	}
	if slices.Contains(p.lv.Domains(p.t, false), name) {
		p.t.Errorf("domain %s is defined on the machine's libvirtd (the source's)", name)
	}
}

// counters reads the byte counters of the netns hosts' veths.
func (p *placeWorld) counters() map[string]testenv.Counters {
	out := map[string]testenv.Counters{}
	for h, ns := range p.netns {
		out[h] = ns.Bytes(p.t, p.dev[h])
	}
	return out
}

// TestPlacementSpreadsAcrossHosts: a batch of four VMs with local storage
// on a cluster of three hosts, one of them the migration server, spreads
// by fewest_vms (no host runs a VM, so the hosts by name: a, b, c, then
// a); each disk is identical on its host and on no other, each domain was
// defined by its host's own agent and runs on its host's libvirtd only,
// and the veth of each other host received at least the data of the disks
// placed there. Then: a job naming its host lands there; a host in
// maintenance is never picked; a host of no cluster is refused at
// creation, naming the field.
func TestPlacementSpreadsAcrossHosts(t *testing.T) {
	t.Parallel() // see doc.go
	p := newPlaceWorld(t)
	w := p.world
	var vms []*testenv.TestVM
	var specs []*ferryv1.MigrationJobSpec
	for range 4 {
		vm := testenv.NewTestVM(t, w.lv, testenv.VMOptions{RandomBytes: 8 << 20})
		vms = append(vms, vm)
		spec := w.spec(w.sourceVM(w.source, vm.Name), &ferryv1.MigrationOptions{AutoStart: proto.Bool(true)})
		specs = append(specs, spec)
	}
	before := p.counters()
	start := time.Now()
	resp, err := w.f.client.Jobs().CreateMigrationJobs(ctx(t, 60*time.Second), &ferryv1.CreateMigrationJobsRequest{
		Source: w.source, MigrationServer: w.server, Jobs: specs})
	must(t, err)
	// Each host's libvirtd is its own and runs nothing yet: fewest_vms,
	// counting the VMs of the batch already placed, goes round the hosts
	// by name.
	want := []string{p.hosts[0], p.hosts[1], p.hosts[2], p.hosts[0]}
	for i, j := range resp.GetJobs() {
		if got := strings.TrimPrefix(j.GetTargetHost(), "hosts/"); got != want[i] ||
			!strings.HasPrefix(j.GetPlacementReason(), "allocation strategy fewest_vms: hosts/"+want[i]+" (") {
			t.Errorf("job %d placed on %s (%q), want %s", i, got, j.GetPlacementReason(), want[i])
		}
		t.Logf("job %d on %s: %s", i, want[i], j.GetPlacementReason())
	}
	if t.Failed() {
		t.FailNow()
	}
	perHost := map[string]int64{}
	for i, j := range resp.GetJobs() {
		done := w.waitJob(j.GetName(), 5*time.Minute, "job "+j.GetName()+" to end", terminal)
		if done.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
			t.Fatalf("job %s ended %s: %s", j.GetName(), done.GetState(), done.GetReason())
		}
		for _, d := range vms[i].Disks {
			compare(t, d.Path, p.volumeOn(want[i], j.GetName(), d.Target))
			for _, h := range p.hosts {
				if _, err := os.Stat(p.volumeOn(h, j.GetName(), d.Target)); h != want[i] && err == nil {
					t.Errorf("%s's disk %s is on %s too", j.GetName(), d.Target, h)
				}
			}
			for _, e := range d.Extents {
				perHost[want[i]] += e.Length
			}
		}
		// The domain was defined by the agent of the host it is placed on.
		defined := fmt.Sprintf("job=%s", j.GetName())
		for _, h := range p.hosts {
			n := 0
			for _, l := range p.agents[h].lines("target work done") {
				if strings.Contains(l, defined) && strings.Contains(l, "DEFINE_DOMAIN") {
					n++
				}
			}
			if remote := want[i] != p.hosts[0]; remote && (n == 1) != (h == want[i]) {
				t.Errorf("host %s's agent defined the domain of %s %d times (placed on %s)", h, j.GetName(), n, want[i])
			}
		}
		// And it runs there, from the host's own storage, and nowhere else.
		p.domainOn(want[i], specs[i].GetTarget().GetVmName(), true)
	}
	t.Logf("4 jobs done in %s", time.Since(start).Round(time.Millisecond))
	after := p.counters()
	for _, h := range p.hosts[1:] {
		d := after[h].Sub(before[h])
		t.Logf("host %s: veth received %d bytes, sent %d; its disks hold %d bytes of data", h, d.RX, d.TX, perHost[h])
		if d.RX < perHost[h] {
			t.Errorf("host %s's veth received %d bytes, less than the %d bytes of data of the disks placed there", h, d.RX, perHost[h])
		}
	}

	// target.host is honoured; a host in maintenance is never picked.
	_, err = w.f.client.TargetInventory().SetHostMaintenance(ctx(t, 10*time.Second), &ferryv1.SetHostMaintenanceRequest{
		Name: "hosts/" + p.hosts[1], Maintenance: true})
	must(t, err)
	pre, err := w.f.client.Jobs().PreviewMigrationJobs(ctx(t, 60*time.Second), &ferryv1.PreviewMigrationJobsRequest{
		Source: w.source, MigrationServer: w.server, Jobs: []*ferryv1.MigrationJobSpec{w.named(specs[0], ""), w.named(specs[1], "hosts/"+p.hosts[0])}})
	must(t, err)
	if got, why := pre.GetJobs()[0].GetTargetHost(), pre.GetJobs()[0].GetPlacementReason(); got == "hosts/"+p.hosts[1] ||
		!strings.Contains(why, "not hosts/"+p.hosts[1]+" (in maintenance)") {
		t.Errorf("with %s in maintenance, a VM went to %s: %s", p.hosts[1], got, why)
	}
	if got := pre.GetJobs()[1].GetTargetHost(); got != "hosts/"+p.hosts[0] || pre.GetJobs()[1].GetPlacementReason() != "named by target.host" {
		t.Errorf("a VM naming hosts/%s went to %s (%q)", p.hosts[0], got, pre.GetJobs()[1].GetPlacementReason())
	}
	// A host outside the cluster is refused at creation.
	_, err = w.f.client.Jobs().CreateMigrationJobs(ctx(t, 60*time.Second), &ferryv1.CreateMigrationJobsRequest{
		Source: w.source, MigrationServer: w.server, Jobs: []*ferryv1.MigrationJobSpec{w.named(specs[0], "hosts/nosuch-"+w.id)}})
	if err == nil || !strings.Contains(err.Error(), "jobs[0].target.host") {
		t.Fatalf("a job naming a host that is not in the cluster: %v", err)
	}
}

// named is spec with another target name (so it can be created again)
// and target.host set; the domain of that name goes when the test ends.
func (w *world) named(spec *ferryv1.MigrationJobSpec, host string) *ferryv1.MigrationJobSpec {
	s := proto.Clone(spec).(*ferryv1.MigrationJobSpec)
	s.Target.VmName, s.Target.Host = s.Target.VmName+"-"+path.Base(host)+"x", host
	w.t.Cleanup(func() {
		w.f.stopAgents()
		w.removeDomain(s.GetTarget().GetVmName())
	})
	return s
}

// TestPlacementTargetHostFaults: the chosen host's agent is killed
// mid-upload. Restarted within the grace period, the job resumes and
// succeeds, its disk identical. Killed past the grace period, the job
// fails naming the host, and once the agent returns nothing of the job is
// left on that host (the rollback waited as a pending cleanup).
func TestPlacementTargetHostFaults(t *testing.T) {
	t.Parallel() // see doc.go
	p := newPlaceWorld(t)
	w := p.world
	b := p.hosts[1]
	w.setBandwidth(proto.String(eightMiBps), nil)
	upload := func(grace time.Duration) (string, *ferryv1.MigrationJobSpec, *testenv.TestVM) {
		_, err := w.f.client.Settings().UpdateSettings(ctx(t, 10*time.Second), &ferryv1.UpdateSettingsRequest{
			Settings: &ferryv1.Settings{AgentGracePeriod: durationpb.New(grace)}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"agent_grace_period"}}})
		must(t, err)
		vm := testenv.NewTestVM(t, w.lv, testenv.VMOptions{RandomBytes: 40 << 20})
		spec := w.named(w.spec(w.sourceVM(w.source, vm.Name), &ferryv1.MigrationOptions{AutoStart: new(bool)}), "hosts/"+b)
		name := w.createJob(spec)
		w.waitJob(name, 3*time.Minute, "the upload onto "+b+" to begin", func(j *ferryv1.MigrationJob) bool {
			return j.GetPhase() == ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_UPLOADING && disk(j, "vda").GetDoneBytes() > 0 || terminal(j)
		})
		p.agents[b].kill()
		return name, spec, vm
	}

	// Back within the grace period (2 min): the job goes on and succeeds.
	name, spec, vm := upload(2 * time.Minute)
	time.Sleep(3 * time.Second)
	p.agents[b] = w.f.startAgentWith(b, t.TempDir(), p.netns[b], "--migration-address", p.addr[b])
	j := w.waitJob(name, 5*time.Minute, "the job to end", terminal)
	if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
		t.Fatalf("job ended %s: %s", j.GetState(), j.GetReason())
	}
	for _, d := range vm.Disks {
		compare(t, d.Path, p.volumeOn(b, name, d.Target))
	}
	p.domainOn(b, spec.GetTarget().GetVmName(), false)

	// Gone past the grace period (5 s): the job fails; the host cleans up when it returns.
	name, spec, _ = upload(5 * time.Second)
	j = w.waitJob(name, 3*time.Minute, "the job to fail", terminal)
	if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED || !strings.Contains(j.GetReason(), "hosts/"+b) {
		t.Fatalf("job ended %s: %q; want FAILED naming hosts/%s", j.GetState(), j.GetReason(), b)
	}
	if _, err := os.Stat(p.volumeOn(b, name, "vda")); err != nil {
		t.Fatalf("before %s returns, its volume should still be there: %v", b, err)
	}
	p.agents[b] = w.f.startAgentWith(b, t.TempDir(), p.netns[b], "--migration-address", p.addr[b])
	testkit.WaitFor(t, 60*time.Second, "the volume on "+b+" removed", func() bool {
		_, err := os.Stat(p.volumeOn(b, name, "vda"))
		return os.IsNotExist(err)
	})
	testkit.WaitFor(t, 30*time.Second, "the pending cleanup on "+b+" cleared", func() bool {
		h, err := w.f.client.TargetInventory().GetHost(ctx(t, 10*time.Second), &ferryv1.GetHostRequest{Name: "hosts/" + b})
		return err == nil && len(h.GetPendingCleanups()) == 0
	})
	for _, h := range p.hosts {
		if slices.Contains(p.libvirt[h].Domains(t, false), spec.GetTarget().GetVmName()) {
			t.Errorf("domain %s left behind on %s", spec.GetTarget().GetVmName(), h)
		}
	}
}

// TestPlacementRestartMovesTheJob: a job the strategy placed on b (a and
// c in maintenance) fails once b's agent is gone past the grace period.
// Restarted, it is placed again: b, disconnected, is passed over, and the
// job succeeds on c, its disk identical on c's storage, its domain
// running on c's libvirtd and on no other. When b's agent returns, the
// pending cleanup removes what the first attempt left on b, and only
// there.
func TestPlacementRestartMovesTheJob(t *testing.T) {
	t.Parallel() // see doc.go
	p := newPlaceWorld(t)
	w := p.world
	a, b, c := p.hosts[0], p.hosts[1], p.hosts[2]
	maintenance := func(h string, on bool) {
		_, err := w.f.client.TargetInventory().SetHostMaintenance(ctx(t, 10*time.Second), &ferryv1.SetHostMaintenanceRequest{
			Name: "hosts/" + h, Maintenance: on})
		must(t, err)
	}
	maintenance(a, true)
	maintenance(c, true)
	w.setBandwidth(proto.String(eightMiBps), nil)
	_, err := w.f.client.Settings().UpdateSettings(ctx(t, 10*time.Second), &ferryv1.UpdateSettingsRequest{
		Settings: &ferryv1.Settings{AgentGracePeriod: durationpb.New(5 * time.Second)}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"agent_grace_period"}}})
	must(t, err)
	vm := testenv.NewTestVM(t, w.lv, testenv.VMOptions{RandomBytes: 40 << 20})
	spec := w.spec(w.sourceVM(w.source, vm.Name), &ferryv1.MigrationOptions{AutoStart: proto.Bool(true)})
	name := w.createJob(spec)
	if j := w.job(name); j.GetTargetHost() != "hosts/"+b {
		t.Fatalf("with a and c in maintenance the job went to %s: %s", j.GetTargetHost(), j.GetPlacementReason())
	}
	w.waitJob(name, 3*time.Minute, "the upload onto "+b+" to begin", func(j *ferryv1.MigrationJob) bool {
		return j.GetPhase() == ferryv1.MigrationJobPhase_MIGRATION_JOB_PHASE_UPLOADING && disk(j, "vda").GetDoneBytes() > 0 || terminal(j)
	})
	p.agents[b].kill()
	j := w.waitJob(name, 3*time.Minute, "the job to fail", terminal)
	if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED || !strings.Contains(j.GetReason(), "hosts/"+b) {
		t.Fatalf("job ended %s: %q; want FAILED naming hosts/%s", j.GetState(), j.GetReason(), b)
	}

	maintenance(c, false)
	start := time.Now()
	resp, err := w.f.client.Jobs().RestartMigrationJob(ctx(t, 10*time.Second), &ferryv1.RestartMigrationJobRequest{Name: name})
	must(t, err)
	if got, why := resp.GetJob().GetTargetHost(), resp.GetJob().GetPlacementReason(); got != "hosts/"+c ||
		!strings.HasPrefix(why, "chosen again at restart: allocation strategy fewest_vms: hosts/"+c+" (") ||
		!strings.Contains(why, "hosts/"+b+" (disconnected)") {
		t.Fatalf("restarted job placed on %s: %q; want hosts/%s, passing over hosts/%s (disconnected)", got, why, c, b)
	}
	t.Logf("restarted: %s", resp.GetJob().GetPlacementReason())
	j = w.waitJob(name, 5*time.Minute, "the restarted job to end", terminal)
	if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
		t.Fatalf("restarted job ended %s: %s", j.GetState(), j.GetReason())
	}
	t.Logf("the restarted job succeeded on %s in %s", c, time.Since(start).Round(time.Millisecond))
	for _, d := range vm.Disks {
		compare(t, d.Path, p.volumeOn(c, name, d.Target))
		if _, err := os.Stat(p.volumeOn(a, name, d.Target)); err == nil {
			t.Errorf("disk %s is on %s too", d.Target, a)
		}
	}
	p.domainOn(c, spec.GetTarget().GetVmName(), true)

	// b returns: its pending cleanup removes the first attempt's volume
	// there; c's domain and volumes stay.
	if _, err := os.Stat(p.volumeOn(b, name, "vda")); err != nil {
		t.Fatalf("before %s returns, the first attempt's volume should still be there: %v", b, err)
	}
	p.agents[b] = w.f.startAgentWith(b, t.TempDir(), p.netns[b], "--migration-address", p.addr[b])
	testkit.WaitFor(t, 60*time.Second, "the volume on "+b+" removed", func() bool {
		_, err := os.Stat(p.volumeOn(b, name, "vda"))
		return os.IsNotExist(err)
	})
	testkit.WaitFor(t, 30*time.Second, "the pending cleanup on "+b+" cleared", func() bool {
		h, err := w.f.client.TargetInventory().GetHost(ctx(t, 10*time.Second), &ferryv1.GetHostRequest{Name: "hosts/" + b})
		return err == nil && len(h.GetPendingCleanups()) == 0
	})
	p.domainOn(c, spec.GetTarget().GetVmName(), true)
	for _, d := range vm.Disks {
		compare(t, d.Path, p.volumeOn(c, name, d.Target))
	}
}
