package pipeline

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/ferry-v2v/ferry/pkg/nbd"
	"github.com/ferry-v2v/ferry/pkg/testenv"
)

// tunnel is one sshd on loopback in front of an export, reached two
// ways: by Ferry over its own SSH connection, opening a stream-local
// channel to the export's socket per copy (as the agent reads a backup
// export), and by OpenSSH's `ssh -L`, forwarding a local socket to it.
type tunnel struct {
	remote string // the export's socket
	local  string // the socket ssh -L listens on
	client *ssh.Client
	tb     testing.TB
}

// startTunnel starts sshd, Ferry's SSH connection and `ssh -L`, all
// ended with the benchmark.
func startTunnel(tb testing.TB, remote string) *tunnel {
	tb.Helper()
	sshd := testenv.StartSSHD(tb, testenv.SSHDOptions{})
	client, err := ssh.Dial("tcp", sshd.Addr, sshd.ClientConfig(tb))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { client.Close() })
	dir := tb.TempDir()
	key, known := filepath.Join(dir, "id"), filepath.Join(dir, "known_hosts")
	if err := os.WriteFile(key, sshd.ClientKeyPEM, 0o600); err != nil {
		tb.Fatal(err)
	}
	line := fmt.Sprintf("[%s]:%d %s\n", sshd.Host, sshd.Port, sshd.HostKey)
	if err := os.WriteFile(known, []byte(line), 0o600); err != nil {
		tb.Fatal(err)
	}
	t := &tunnel{remote: remote, local: filepath.Join(dir, "fwd.sock"), client: client, tb: tb}
	cmd := exec.Command("ssh", "-N", "-F", "/dev/null", "-i", key, "-p", fmt.Sprint(sshd.Port),
		"-o", "UserKnownHostsFile="+known, "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
		"-o", "ExitOnForwardFailure=yes", "-L", t.local+":"+remote, sshd.User+"@"+sshd.Host)
	out, err := os.Create(filepath.Join(dir, "ssh.log"))
	if err != nil {
		tb.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		out.Close()
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(t.local); err == nil {
			return t
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(out.Name())
			tb.Fatalf("ssh -L did not listen on %s: %s", t.local, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// dialFerry opens a channel to the export over Ferry's SSH connection
// and negotiates NBD on it with the defaults the agent uses.
func (t *tunnel) dialFerry() *nbd.Client {
	t.tb.Helper()
	conn, err := t.client.DialContext(context.Background(), "unix", t.remote)
	if err != nil {
		t.tb.Fatal(err)
	}
	c, err := nbd.NewClient(context.Background(), conn, nbd.Options{})
	if err != nil {
		conn.Close()
		t.tb.Fatal(err)
	}
	t.tb.Cleanup(func() { c.Close() })
	return c
}
