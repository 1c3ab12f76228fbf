package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// netWorld is a world whose agent and source live on hosts of their own:
//
//	root namespace: coordinator on 172.N.1.1, libvirtd, the test VMs
//	agent host (netns): 172.N.1.2 towards the coordinator,
//	    management 172.N.2.2 and migration 172.N.3.2 towards the source
//	source host (netns): sshd on management 172.N.2.1 and migration
//	    172.N.3.1, libvirtd's socket (the file system is shared)
//
// The source is registered at its management address. The migration
// server's migration CIDR is 172.N.3.0/24: the agent binds every source
// connection to 172.N.3.2, and the agent host routes what leaves from that
// address over the migration link (source-based routing, as multi-homed
// hosts do), to nothing else: when that link is down, such packets are
// unreachable rather than sent over management.
type netWorld struct {
	*world
	agentNS, sourceNS     *testenv.NetNS
	mgmtDev, migrationDev string // the agent host's ends
	// migrationRoute is the agent host's route from its migration address
	// to the source (table, destination, gateway), which a link going down
	// removes.
	migrationRoute []string
}

// migrationLink takes the agent host's end of the migration link down or
// up; up restores its route, as the host's network configuration would.
func (n *netWorld) migrationLink(up bool) {
	if !up {
		n.agentNS.IP(n.t, "link", "set", n.migrationDev, "down")
		return
	}
	n.agentNS.IP(n.t, "link", "set", n.migrationDev, "up")
	n.agentNS.IP(n.t, append([]string{"route", "replace"}, n.migrationRoute...)...)
}

func newNetWorld(t *testing.T, agentArgs ...string) *netWorld {
	t.Helper()
	testenv.RequireRoot(t)
	w := &world{t: t, id: randID(), lv: testenv.RequireLibvirt(t)}
	n := &netWorld{world: w}
	octet := testenv.Subnet172(t)
	net := func(subnet, host int) string { return fmt.Sprintf("172.%d.%d.%d", octet, subnet, host) }
	n.agentNS = testenv.NewNetNS(t, "fa-"+w.id)
	n.sourceNS = testenv.NewNetNS(t, "fs-"+w.id)
	n.mgmtDev, n.migrationDev = "fm"+w.id+"a", "fx"+w.id+"a"
	testenv.Veth(t, nil, "fc"+w.id+"r", net(1, 1)+"/24", n.agentNS, "fc"+w.id+"a", net(1, 2)+"/24")
	testenv.Veth(t, n.agentNS, n.mgmtDev, net(2, 2)+"/24", n.sourceNS, "fm"+w.id+"s", net(2, 1)+"/24")
	testenv.Veth(t, n.agentNS, n.migrationDev, net(3, 2)+"/24", n.sourceNS, "fx"+w.id+"s", net(3, 1)+"/24")
	table := "4242"
	n.agentNS.IP(t, "rule", "add", "from", net(3, 2), "lookup", table)
	n.migrationRoute = []string{net(2, 1) + "/32", "via", net(3, 1), "dev", n.migrationDev, "table", table}
	n.agentNS.IP(t, append([]string{"route", "add"}, n.migrationRoute...)...)
	n.agentNS.IP(t, "route", "add", "unreachable", "default", "table", table)

	w.sshd = testenv.StartSSHD(t, testenv.SSHDOptions{NetNS: n.sourceNS, ListenAddresses: []string{net(2, 1), net(3, 1)}})
	w.sshHost, w.sshPort = net(2, 1), w.sshd.Port
	w.f = startFerryOn(t, net(1, 1))
	w.f.agentNetNS = n.agentNS
	w.f.agentArgs = agentArgs
	w.migrationCIDR = net(3, 0) + "/24"
	w.host = "e2e-" + w.id
	w.f.agentCluster = w.clusterName()
	w.cacheDir = t.TempDir()
	w.storageDir = filepath.Join(testenv.ImagesDir, "ferry-e2e-"+w.id)
	must(t, os.MkdirAll(w.storageDir, 0o755))
	t.Cleanup(func() { os.RemoveAll(w.storageDir) })
	w.createNetwork()
	w.f.startAgent(w.host, w.cacheDir)
	w.createTargetInventory()
	return n
}

// counters reads the agent host's management and migration byte counters.
func (n *netWorld) counters() (mgmt, migration testenv.Counters) {
	return n.agentNS.Bytes(n.t, n.mgmtDev), n.agentNS.Bytes(n.t, n.migrationDev)
}

// TestFaultMigrationNetwork: the agent and the source are hosts of their
// own (network namespaces) joined by a management and a migration link
// (veth pairs).
//
//  1. A migration's disk data crosses the migration link only: its byte
//     counters grow by at least the data copied, the management link's by
//     almost nothing.
//  2. The migration link is cut (ip link set down) mid-copy: nothing fails
//     over to the management link; the job waits, retries within its 10 s
//     budget, then fails with the reason. Once the link is back, the
//     agent ends the backup it left on the source.
func TestFaultMigrationNetwork(t *testing.T) {
	t.Parallel() // see doc.go
	n := newNetWorld(t, "--source-retry-budget", "10s", "--source-keepalive", "1s", "--source-cleanup-interval", "2s")
	w := n.world

	// 1: data over the migration network only.
	src := testenv.NewTestVM(t, w.lv, testenv.VMOptions{RandomBytes: 16 << 20})
	spec := w.spec(w.sourceVM(w.source, src.Name), nil)
	mgmt0, mig0 := n.counters()
	name := w.createJob(spec)
	j := w.waitJob(name, 3*time.Minute, "the job to end", terminal)
	if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
		t.Fatalf("job ended %s: %s", j.GetState(), j.GetReason())
	}
	mgmt1, mig1 := n.counters()
	for _, d := range src.Disks {
		compare(t, d.Path, w.volume(name, d.Target))
	}
	var data int64
	for _, d := range []string{"vda", "vdb"} {
		data += copiedOf(t, w.f.agents[w.host], d).read
	}
	dm, dx := mgmt1.Sub(mgmt0), mig1.Sub(mig0)
	t.Logf("job copied %d bytes of disk data; migration link rx %d tx %d bytes, management link rx %d tx %d bytes",
		data, dx.RX, dx.TX, dm.RX, dm.TX)
	if dx.RX < data {
		t.Errorf("the migration link received %d bytes, less than the %d bytes of disk data", dx.RX, data)
	}
	if dm.Total() > 64<<10 {
		t.Errorf("the management link carried %d bytes during the migration, want next to nothing", dm.Total())
	}

	// 2: the migration link is cut mid-copy.
	src2 := testenv.NewTestVM(t, w.lv, testenv.VMOptions{RandomBytes: 40 << 20})
	w.setBandwidth(nil, proto.String(eightMiBps))
	name2 := w.createJob(w.spec(w.sourceVM(w.source, src2.Name), nil))
	w.waitJob(name2, 2*time.Minute, "a quarter of the root disk in the cache", func(j *ferryv1.MigrationJob) bool {
		d := disk(j, "vda")
		return terminal(j) || d.GetTotalBytes() > 0 && d.GetDoneBytes()*4 >= d.GetTotalBytes()
	})
	mgmt2, _ := n.counters()
	n.migrationLink(false)
	cutAt := time.Now()
	time.Sleep(3 * time.Second)
	if j := w.job(name2); terminal(j) {
		t.Fatalf("job ended %s right after the cut, want it to wait and retry: %s", j.GetState(), j.GetReason())
	}
	j2 := w.waitJob(name2, 2*time.Minute, "the job to fail", terminal)
	failedAfter := time.Since(cutAt)
	mgmt3, _ := n.counters()
	if j2.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED || !strings.Contains(j2.GetReason(), "retry budget of 10s") ||
		!strings.Contains(j2.GetReason(), "no local address in the migration CIDR") {
		t.Fatalf("job ended %s (%q), want FAILED past the retry budget", j2.GetState(), j2.GetReason())
	}
	agent := w.f.agents[w.host]
	attempts := jobLines(agent, name2, "source still unreachable")
	t.Logf("migration link down: job FAILED %v later after %d reconnect attempts, management link carried %d bytes meanwhile: %s",
		failedAfter.Round(100*time.Millisecond), len(attempts), mgmt3.Sub(mgmt2).Total(), j2.GetReason())
	if len(attempts) == 0 {
		t.Error("the agent did not retry")
	}
	if dm := mgmt3.Sub(mgmt2); dm.Total() > 64<<10 {
		t.Errorf("the management link carried %d bytes while the migration link was down: a failover", dm.Total())
	}
	if jt := src2.JobType(t); jt == "None" {
		t.Fatal("the backup ended although the source was unreachable: the test cannot show the cleanup")
	}
	n.migrationLink(true)
	testkit.WaitFor(t, 60*time.Second, "the agent to end the backup left on the source", func() bool {
		return src2.JobType(t) == "None" && len(leftovers(src2)) == 0 &&
			len(agent.lines("ended a backup a failed or crashed job left")) > 0
	})
}
