package kvm

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestColdScript runs the script a cold export runs on the source host,
// locally: qemu-nbd serves the image (its backing chain too) with no lock
// held, and ending the script's input stops it and removes the socket.
func TestColdScript(t *testing.T) {
	if _, err := exec.LookPath("qemu-nbd"); err != nil {
		t.Skip("no qemu-nbd")
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "a,b.qcow2") // a comma, doubled in --image-opts
	sock := filepath.Join(dir, "s.sock")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "1M")
	cmd := exec.Command("sh", "-c", coldScript(sock, Disk{Target: "vda", Path: img, Format: "qcow2"}, ""))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "ready\n" {
		t.Fatalf("script said %q (%v), want ready", line, err)
	}
	// The image is not locked: a writer may open it (a VM started).
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -q 0 4k", img)
	run(t, "nbdinfo", "--size", "nbd+unix:///vda?socket="+sock)
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("script: %v: %s", err, stderr.String())
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left after the script ended: %v", err)
	}
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v: %s", name, args, err, out)
	}
}
