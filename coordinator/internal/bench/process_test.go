package bench

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/ferry-v2v/ferry/pkg/tlsutil"

	"github.com/ferry-v2v/ferry/pkg/testenv"
	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// userHZ is the unit of utime and stime in /proc/PID/stat: USER_HZ, 100
// on every Linux architecture Go supports.
const userHZ = 100

// buildBinaries builds the coordinator and the agent into a temporary
// directory, as `make build` would, and returns that directory.
func buildBinaries(b *testing.B) string {
	b.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		b.Fatalf("the go command is needed to build the binaries: %v", err)
	}
	dir := b.TempDir()
	cmd := exec.Command(goTool, "build", "-tags", testenv.BuildTags, "-o", dir+"/",
		"github.com/ferry-v2v/ferry/coordinator/cmd/ferry-coordinator",
		"github.com/ferry-v2v/ferry/agent/cmd/ferry-agent")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	return dir
}

// process is a daemon the benchmark started; it is stopped with SIGTERM
// (then SIGKILL) when the benchmark ends.
type process struct {
	cmd *exec.Cmd
	log string // its stderr
}

func startProcess(b *testing.B, name string, bin string, args ...string) *process {
	b.Helper()
	log := filepath.Join(b.TempDir(), name+".log")
	f, err := os.Create(log)
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		b.Fatalf("start %s: %v", name, err)
	}
	_ = f.Close()
	p := &process{cmd: cmd, log: log}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	b.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	return p
}

func (p *process) pid() int { return p.cmd.Process.Pid }

// coordinator is a one-node ferry-coordinator process with its own PKI.
type coordinator struct {
	*process
	addr   string
	tlsDir string
}

var apiAddrPattern = regexp.MustCompile(`msg="coordinator serving".* api=(\S+)`)

// startCoordinator runs ferry-coordinator from binDir as a bootstrapping
// single node on loopback ports, and waits until it leads.
func startCoordinator(b *testing.B, binDir string) *coordinator {
	b.Helper()
	dir := b.TempDir()
	tlsDir := filepath.Join(dir, "tls")
	if err := tlsutil.InitPKI(tlsDir, tlsutil.Options{}); err != nil {
		b.Fatal(err)
	}
	p := startProcess(b, "ferry-coordinator", filepath.Join(binDir, "ferry-coordinator"),
		"--data-dir", filepath.Join(dir, "data"), "--listen", "127.0.0.1:0", "--raft-listen", "127.0.0.1:0",
		"--tls-dir", tlsDir, "--key-file", filepath.Join(dir, "seal.key"))
	c := &coordinator{process: p, tlsDir: tlsDir}
	testkit.WaitFor(b, 30*time.Second, "ferry-coordinator to serve (log "+p.log+")", func() bool {
		out, _ := os.ReadFile(p.log)
		if m := apiAddrPattern.FindSubmatch(out); m != nil {
			c.addr = string(m[1])
		}
		return c.addr != ""
	})
	waitLeader(b, newAPI(c.dial(b)), 30*time.Second)
	return c
}

// dial connects to the coordinator with the operator certificate.
func (c *coordinator) dial(b *testing.B) *grpc.ClientConn {
	b.Helper()
	return c.dialAs(b, tlsutil.DefaultOperator)
}

// dialAgent connects to the coordinator as host's agent (its certificate
// issued on first use).
func (c *coordinator) dialAgent(b *testing.B, host string) *grpc.ClientConn {
	b.Helper()
	return c.dialAs(b, tlsutil.Identity{Role: tlsutil.RoleIDAgent, Name: host})
}

// issue makes (once) a certificate for id and returns its directory.
func (c *coordinator) issue(b *testing.B, id tlsutil.Identity) string {
	b.Helper()
	dir, _, err := tlsutil.Issue(c.tlsDir, id, tlsutil.Options{})
	if err != nil {
		b.Fatal(err)
	}
	return dir
}

func (c *coordinator) dialAs(b *testing.B, id tlsutil.Identity) *grpc.ClientConn {
	b.Helper()
	dir := c.issue(b, id)
	creds, err := tlsutil.ClientCredentialsFromDir(dir, tlsutil.PairName(id.Role))
	if err != nil {
		b.Fatal(err)
	}
	conn, err := grpc.NewClient(c.addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = conn.Close() })
	return conn
}

// cpuTime is the CPU time (user plus system) pid has used.
func cpuTime(pid int) (time.Duration, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, field 2, is in parentheses and may hold spaces;
	// utime and stime are fields 14 and 15, the 12th and 13th after it.
	rest := string(raw[strings.LastIndexByte(string(raw), ')')+1:])
	f := strings.Fields(rest)
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields after the name", pid, len(f))
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / userHZ, nil
}

// memStatus returns the named fields of /proc/PID/status in MiB
// (VmRSS, VmHWM, ...).
func memStatus(pid int, fields ...string) (map[string]float64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		for _, want := range fields {
			if key != want {
				continue
			}
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(val), " kB"), 64)
			if err != nil {
				return nil, fmt.Errorf("/proc/%d/status %s: %w", pid, key, err)
			}
			out[key] = kb / 1024
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	for _, want := range fields {
		if _, ok := out[want]; !ok {
			return nil, fmt.Errorf("/proc/%d/status has no %s", pid, want)
		}
	}
	return out, nil
}

// cpuOver measures the CPU pid uses over d: CPU seconds per wall second.
func cpuOver(ctx context.Context, pid int, d time.Duration) (float64, error) {
	cpu0, err := cpuTime(pid)
	if err != nil {
		return 0, err
	}
	t0 := time.Now()
	select {
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-time.After(d):
	}
	cpu1, err := cpuTime(pid)
	if err != nil {
		return 0, err
	}
	return (cpu1 - cpu0).Seconds() / time.Since(t0).Seconds(), nil
}
