package e2e

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/pkg/client"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"
	"github.com/ferry-v2v/ferry/pkg/tlsutil"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

var bins struct {
	once sync.Once
	dir  string
	err  error
}

// binary builds the three commands once per test binary run.
func binary(t testing.TB, name string) string {
	t.Helper()
	bins.once.Do(func() {
		bins.dir, bins.err = os.MkdirTemp("", "ferry-e2e-bin-")
		if bins.err != nil {
			return
		}
		cmd := exec.Command("go", "build", "-tags", testenv.BuildTags, "-o", bins.dir,
			"github.com/ferry-v2v/ferry/coordinator/cmd/ferry-coordinator",
			"github.com/ferry-v2v/ferry/agent/cmd/ferry-agent",
			"github.com/ferry-v2v/ferry/coordinator/cmd/ferryctl")
		out, err := cmd.CombinedOutput()
		if err != nil {
			bins.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if bins.err != nil {
		t.Fatal(bins.err)
	}
	return filepath.Join(bins.dir, name)
}

func TestMain(m *testing.M) {
	flag.Parse()
	given := false
	flag.Visit(func(f *flag.Flag) { given = given || f.Name == "test.parallel" })
	if !given {
		// Most of a test is waiting on VMs and jobs: four at once, those
		// that boot a real guest in TCG two at a time (heavy). See doc.go.
		if err := flag.Set("test.parallel", strconv.Itoa(parallelTests)); err != nil {
			panic(err)
		}
	}
	code := m.Run()
	if bins.dir != "" {
		os.RemoveAll(bins.dir)
	}
	os.Exit(code)
}

// proc is a child process whose output goes to the test log.
type proc struct {
	name    string
	cmd     *exec.Cmd
	done    chan struct{}
	scanned chan struct{} // closed when the last output line is in out

	mu  sync.Mutex
	out []string
}

// lines returns the output lines that contain substr.
func (p *proc) lines(substr string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, l := range p.out {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return out
}

func start(t testing.TB, name string, args ...string) *proc {
	t.Helper()
	return startIn(t, nil, name, args...)
}

// startIn runs a command inside a network namespace (nil: this one).
func startIn(t testing.TB, ns *testenv.NetNS, name string, args ...string) *proc {
	t.Helper()
	return startArgv(t, name, ns.Command(append([]string{binary(t, name)}, args...)...))
}

// startArgv runs argv as the process called name.
func startArgv(t testing.TB, name string, argv []string) *proc {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{}), scanned: make(chan struct{})}
	// With -v the output is logged as it comes; without, it is logged
	// only when the test fails, after the test's own messages (below), so
	// that a failure's reason comes first in a long FAIL block (CI keeps
	// the start of it).
	live := testing.Verbose()
	go func() {
		defer close(p.scanned)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.out = append(p.out, sc.Text())
			p.mu.Unlock()
			if live {
				logLine(t, name+": "+sc.Text())
			}
		}
	}()
	go func() {
		_ = cmd.Wait()
		pw.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		if live || !t.Failed() {
			return
		}
		select {
		case <-p.scanned:
		case <-time.After(10 * time.Second):
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, l := range p.out {
			t.Log(name + ": " + l)
		}
	})
	t.Cleanup(func() { p.stop(syscall.SIGTERM) }) // before the one above
	return p
}

func logLine(t testing.TB, s string) {
	defer func() { _ = recover() }() // a line after the test ended
	t.Log(s)
}

// stop sends sig and waits; a process still running after 10 s is killed.
func (p *proc) stop(sig syscall.Signal) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// kill is a crash: SIGKILL, no cleanup by the process.
func (p *proc) kill() { p.stop(syscall.SIGKILL) }

// ferry is a one-node coordinator (the embedded default) and its client.
type ferry struct {
	t       testing.TB
	dir     string
	addr    string
	tlsDir  string
	coord   *proc
	client  *client.Client
	agents  map[string]*proc
	agentDi map[string]string
	// agentArgs are added to every agent's command line.
	agentArgs []string
	// agentNetNS, when set, is where agents run.
	agentNetNS *testenv.NetNS
	// nodes are the coordinator processes of a cluster (startCluster).
	nodes []*coordNode
	// agentCoordinators, when set, is what agents get as --coordinator
	// instead of addr (a proxy in front of it, say).
	agentCoordinators string
	// agentCluster, when set, is every agent's --cluster.
	agentCluster string
	// agentHosts, by host, run its agent as a program of that host: in
	// the host's namespaces, beside the host's own libvirtd and storage.
	agentHosts map[string]*testenv.HostLibvirt
}

// startFerry starts the coordinator; extra are more of its flags.
func startFerry(t testing.TB, extra ...string) *ferry {
	t.Helper()
	return startFerryOn(t, "", extra...)
}

// startFerryOn runs the coordinator on an address of host (a veth's, say)
// with a certificate that names it; "" is the loopback default.
func startFerryOn(t testing.TB, host string, extra ...string) *ferry {
	t.Helper()
	f := &ferry{t: t, dir: t.TempDir(), addr: testkit.FreeAddr(t), agents: map[string]*proc{}, agentDi: map[string]string{}}
	f.tlsDir = filepath.Join(f.dir, "coordinator", "tls")
	args := []string{"--data-dir", filepath.Join(f.dir, "coordinator"), "--raft-listen", testkit.FreeAddr(t)}
	if host != "" {
		_, port, _ := net.SplitHostPort(f.addr)
		f.addr = net.JoinHostPort(host, port)
		f.tlsDir = filepath.Join(f.dir, "tls")
		if out, err := exec.Command(binary(t, "ferry-coordinator"), "tls", "init", "--dir", f.tlsDir, "--host", host).CombinedOutput(); err != nil {
			t.Fatalf("tls init: %v: %s", err, out)
		}
		args = append(args, "--tls-dir", f.tlsDir)
	}
	f.coord = start(t, "ferry-coordinator", append(append(args, "--listen", f.addr), extra...)...)
	testkit.WaitFor(t, 30*time.Second, "the coordinator's PKI", func() bool {
		_, err := os.Stat(filepath.Join(f.tlsDir, tlsutil.OperatorDir, tlsutil.ClientCertFile)) // written last of the pair
		return err == nil
	})
	c, err := client.New(context.Background(), client.Options{Addresses: []string{f.addr}, TLSDir: f.tlsDir, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	f.client = c
	testkit.WaitFor(t, 30*time.Second, "the coordinator to serve", func() bool {
		_, err := c.Membership().ListMembers(ctx(t, 2*time.Second), &ferryv1.ListMembersRequest{})
		return err == nil
	})
	return f
}

// startAgent runs ferry-agent for host name with its cache on cachePath,
// and waits until the host is connected.
func (f *ferry) startAgent(host, cachePath string) *proc {
	f.t.Helper()
	return f.startAgentWith(host, cachePath, f.agentNetNS)
}

// startAgentWith is startAgent in the network namespace ns (nil: the
// root one) with more flags.
func (f *ferry) startAgentWith(host, cachePath string, ns *testenv.NetNS, extra ...string) *proc {
	f.t.Helper()
	dataDir, ok := f.agentDi[host]
	if !ok {
		dataDir = filepath.Join(f.dir, "agent-"+host)
		f.agentDi[host] = dataDir
	}
	coordinators := f.addr
	if f.agentCoordinators != "" {
		coordinators = f.agentCoordinators
	}
	args := append([]string{"--coordinator", coordinators, "--host-name", host, "--data-dir", dataDir,
		"--cache-path", cachePath, "--tls-dir", f.agentTLSDir(host), "--log-level", "debug",
		// TCG targets, like the test sources: a machine's /dev/kvm may be
		// there and not work (nested virtualisation: "failed to set MSR").
		"--domain-type", "qemu"}, f.agentArgs...)
	if f.agentCluster != "" {
		args = append(args, "--cluster", f.agentCluster)
	}
	argv := ns.Command(append([]string{binary(f.t, "ferry-agent")}, append(args, extra...)...)...)
	if h, ok := f.agentHosts[host]; ok {
		argv = h.Command(append([]string{binary(f.t, "ferry-agent")}, append(args, extra...)...)...)
	}
	p := startArgv(f.t, "ferry-agent", argv)
	f.agents[host] = p
	// Generous: on a loaded machine, with the other tests running beside
	// this one, an agent of a host with its own libvirtd once took longer
	// than 30 s to start and connect.
	testkit.WaitFor(f.t, 90*time.Second, "host "+host+" connected", func() bool {
		h, err := f.client.TargetInventory().GetHost(ctx(f.t, 2*time.Second), &ferryv1.GetHostRequest{Name: "hosts/" + host})
		return err == nil && h.GetConnected()
	})
	return p
}

// agentTLSDir issues host's agent certificate (once) with the install's
// CA, as an operator does with 'ferry-coordinator tls issue', and returns
// the directory the agent carries: ca.crt and its own pair only.
func (f *ferry) agentTLSDir(host string) string {
	f.t.Helper()
	out, err := exec.Command(binary(f.t, "ferry-coordinator"), "tls", "issue", "--dir", f.tlsDir, "--role", "agent", "--host", host).CombinedOutput()
	if err != nil {
		f.t.Fatalf("tls issue for agent %s: %v: %s", host, err, out)
	}
	return filepath.Join(f.tlsDir, tlsutil.AgentsDir, host)
}

// stopAgents stops every agent (SIGTERM: jobs interrupted, nothing more
// written); the ones already gone are left as they are.
func (f *ferry) stopAgents() {
	for _, p := range f.agents {
		p.stop(syscall.SIGTERM)
	}
}

func ctx(t testing.TB, d time.Duration) context.Context {
	c, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return c
}

// ferryctl runs the CLI against this coordinator and returns its output.
func (f *ferry) ferryctl(args ...string) (string, error) {
	cmd := exec.Command(binary(f.t, "ferryctl"), append([]string{"--server", f.addr, "--tls-dir", f.tlsDir}, args...)...)
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// parallelTests is how many tests run at once unless -parallel says;
// heavySlots how many of them may boot a real guest under TCG (a CPU each).
const (
	parallelTests = 4
	heavySlots    = 2
)

var heavySem = make(chan struct{}, heavySlots)

// heavy holds one of the heavySlots until t ends: a test that boots a
// real guest (or libguestfs's appliance) under TCG calls it after
// t.Parallel, so that no more than two such guests share the machine's
// CPUs and their boot waits hold.
func heavy(t testing.TB) {
	t.Helper()
	heavySem <- struct{}{}
	t.Cleanup(func() { <-heavySem })
}
