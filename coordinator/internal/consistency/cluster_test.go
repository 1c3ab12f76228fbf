package consistency

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/ferry-v2v/ferry/pkg/client"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"
	"github.com/ferry-v2v/ferry/pkg/testkit"
	"github.com/ferry-v2v/ferry/pkg/tlsutil"
)

var bin struct {
	once sync.Once
	dir  string
	err  error
}

// coordinatorBinary builds ferry-coordinator once per test binary run.
func coordinatorBinary(t *testing.T) string {
	t.Helper()
	bin.once.Do(func() {
		bin.dir, bin.err = os.MkdirTemp("", "ferry-consistency-bin-")
		if bin.err != nil {
			return
		}
		out, err := exec.Command("go", "build", "-tags", testenv.BuildTags, "-o", bin.dir, "github.com/ferry-v2v/ferry/coordinator/cmd/ferry-coordinator").CombinedOutput()
		if err != nil {
			bin.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if bin.err != nil {
		t.Fatal(bin.err)
	}
	return filepath.Join(bin.dir, "ferry-coordinator")
}

func TestMain(m *testing.M) {
	code := m.Run()
	if bin.dir != "" {
		_ = os.RemoveAll(bin.dir)
	}
	os.Exit(code)
}

// node is one coordinator process; it keeps its data directory and
// addresses across kills and restarts.
type node struct {
	id, addr string
	args     []string
	logPath  string

	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{}
	paused bool
}

// cluster is three coordinator processes and a client that knows them all.
type cluster struct {
	t      *testing.T
	bin    string
	tlsDir string
	nodes  []*node
	// admin reads linearizably, to find the leader.
	admin *client.Client
}

// startCluster runs three coordinators on loopback: n1 bootstraps, n2
// and n3 join it with its PKI and seal key. extra are flags for all.
func startCluster(t *testing.T, extra ...string) *cluster {
	t.Helper()
	dir := t.TempDir()
	c := &cluster{t: t, bin: coordinatorBinary(t), tlsDir: filepath.Join(dir, "n1", "tls")}
	var first string
	for i := 1; i <= 3; i++ {
		n := &node{id: fmt.Sprintf("n%d", i), addr: testkit.FreeAddr(t), logPath: filepath.Join(dir, fmt.Sprintf("n%d.log", i))}
		n.args = append([]string{"--node-id", n.id, "--data-dir", filepath.Join(dir, n.id), "--listen", n.addr,
			"--raft-listen", testkit.FreeAddr(t), "--log-level", "info"}, extra...)
		if i == 1 {
			first = n.addr
		} else {
			n.args = append(n.args, "--join", first, "--tls-dir", c.tlsDir, "--key-file", filepath.Join(dir, "n1", "seal.key"))
		}
		c.nodes = append(c.nodes, n)
		c.start(n)
		if i == 1 {
			testkit.WaitFor(t, 60*time.Second, "n1's PKI", func() bool {
				_, err := os.Stat(filepath.Join(c.tlsDir, tlsutil.OperatorDir, tlsutil.ClientCertFile))
				return err == nil
			})
		}
	}
	t.Cleanup(c.stopAll)
	c.admin = c.newClient(client.Options{LinearizableReads: true, Timeout: 10 * time.Second, AttemptTimeout: 2 * time.Second})
	testkit.WaitFor(t, 60*time.Second, "three voters with a leader", func() bool {
		m, err := c.admin.Membership().ListMembers(ctxFor(t, 5*time.Second), &ferryv1.ListMembersRequest{})
		voters := 0
		for _, mb := range m.GetMembers() {
			if mb.GetVoter() {
				voters++
			}
		}
		return err == nil && voters == 3 && m.GetLeaderId() != ""
	})
	return c
}

// newClient is a client of every node with the operator certificate.
func (c *cluster) newClient(opts client.Options) *client.Client {
	c.t.Helper()
	for _, n := range c.nodes {
		opts.Addresses = append(opts.Addresses, n.addr)
	}
	opts.TLSDir = c.tlsDir
	cl, err := client.New(context.Background(), opts)
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { _ = cl.Close() })
	return cl
}

// dial connects to one node only, with the operator certificate.
func (c *cluster) dial(n *node) *grpc.ClientConn {
	c.t.Helper()
	creds, err := tlsutil.ClientCredentialsFromDir(c.tlsDir, tlsutil.RoleClient)
	if err != nil {
		c.t.Fatal(err)
	}
	conn, err := grpc.NewClient(n.addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// start runs (or runs again) n's process, its output appended to its log.
func (c *cluster) start(n *node) {
	c.t.Helper()
	f, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		c.t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(c.bin, n.args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("start %s: %v", n.id, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	n.mu.Lock()
	n.cmd, n.done, n.paused = cmd, done, false
	n.mu.Unlock()
}

// kill is a crash: SIGKILL, and wait for the process to end.
func (c *cluster) kill(n *node) {
	n.mu.Lock()
	cmd, done := n.cmd, n.done
	n.mu.Unlock()
	_ = cmd.Process.Kill()
	<-done
}

// pause (SIGSTOP) and resume (SIGCONT) a node.
func (c *cluster) pause(n *node)  { c.signal(n, syscall.SIGSTOP, true) }
func (c *cluster) resume(n *node) { c.signal(n, syscall.SIGCONT, false) }

func (c *cluster) signal(n *node, sig syscall.Signal, paused bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.cmd.Process.Signal(sig); err != nil {
		c.t.Errorf("signal %s %v: %v", n.id, sig, err)
	}
	n.paused = paused
}

// stopAll resumes and kills every process; on failure it logs their tails.
func (c *cluster) stopAll() {
	for _, n := range c.nodes {
		n.mu.Lock()
		cmd, done := n.cmd, n.done
		n.mu.Unlock()
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Kill()
		<-done
		if c.t.Failed() {
			c.t.Logf("last lines of %s's log:\n%s", n.id, tail(n.logPath, 40))
		}
	}
}

func tail(path string, lines int) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	var all []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		all = append(all, sc.Text())
	}
	return strings.Join(all[max(0, len(all)-lines):], "\n")
}

// leader returns the node that leads, confirmed by a linearizable read,
// waiting up to timeout for one other than not (nil: any).
func (c *cluster) leader(timeout time.Duration, not *node) *node {
	c.t.Helper()
	var l *node
	testkit.WaitFor(c.t, timeout, "a leader", func() bool {
		m, err := c.admin.Membership().ListMembers(ctxFor(c.t, 10*time.Second), &ferryv1.ListMembersRequest{})
		if err != nil {
			return false
		}
		for _, n := range c.nodes {
			if n.id == m.GetLeaderId() && n != not {
				l = n
				return true
			}
		}
		return false
	})
	return l
}

// other returns a node that is neither of the given ones.
func (c *cluster) other(not ...*node) *node {
	for _, n := range c.nodes {
		found := false
		for _, x := range not {
			found = found || n == x
		}
		if !found {
			return n
		}
	}
	return nil
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
