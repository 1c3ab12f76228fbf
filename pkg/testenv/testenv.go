// Package testenv gives integration tests the real parts Ferry talks to: a
// running libvirtd (qemu:///system), an OpenSSH sshd on a loopback port with
// generated keys, and small running TCG test VMs with known disk contents.
//
// It is imported only from _test.go files. Everything here needs root, as
// the CI machines and the development containers run tests. A missing
// component skips the test on a developer's machine and fails it when the
// CI environment variable is true, in both cases saying how to install it.
package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// InstallHint says how to get the components these helpers need.
const InstallHint = "run scripts/deps.sh (Debian: apt-get install libvirt-daemon-system " +
	"libvirt-clients qemu-system-x86 qemu-utils openssh-server nbdkit libnbd-bin)"

// Unavailable stops a test whose real component is missing: t.Skip on a
// developer's machine, t.Fatal when the CI environment variable is true,
// where a skipped integration test would hide a broken environment.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// RequireRoot stops the test unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Unavailable(t, "this test needs root (libvirtd, sshd logins, test users)")
	}
}

// LookPath finds a program on PATH or in the sbin directories that a
// non-login root shell may lack, and stops the test when it is missing.
func LookPath(t testing.TB, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		p := dir + "/" + name
		if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	Unavailable(t, "%s not found; %s", name, InstallHint)
	return ""
}

// Run runs a program and returns its standard output; the test fails with
// the program's standard error when it does not succeed.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := run(context.Background(), nil, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// run runs a program with stdin and returns its standard output or an
// error that quotes the command and its standard error.
func run(ctx context.Context, stdin []byte, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "),
			err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// poll calls cond every interval until it returns true or timeout passes.
func poll(timeout, interval time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(interval)
	}
}

// randomHex returns n random bytes in hex, for unique names.
func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}
