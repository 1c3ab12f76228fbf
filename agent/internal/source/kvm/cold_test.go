package kvm

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
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

// TestColdScriptBitmap: with a bitmap, the cold export's qemu-nbd offers
// the image's persistent dirty bitmap as qemu:dirty-bitmap:<name> (only
// the extents written since it was made are dirty), and refuses, saying
// so, a bitmap the image lacks and one left in use by a writer that was
// killed (inconsistent).
func TestColdScriptBitmap(t *testing.T) {
	for _, p := range []string{"qemu-nbd", "qemu-io", "nbdinfo"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Skip("no " + p)
		}
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "d.qcow2")
	sock := filepath.Join(dir, "s.sock")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "1M")
	run(t, "qemu-img", "bitmap", "--add", img, "b1")
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -q -P 7 64k 64k", img)
	disk := Disk{Target: "vda", Path: img, Format: "qcow2"}

	serve := func(bitmap string) (*exec.Cmd, func() error, string) {
		cmd := exec.Command("sh", "-c", coldScript(sock, disk, bitmap))
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
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		if line != "ready\n" {
			err := cmd.Wait()
			return nil, nil, fmt.Sprintf("%q %v: %s", line, err, stderr.String())
		}
		return cmd, func() error { stdin.Close(); return cmd.Wait() }, ""
	}

	_, stop, failed := serve("b1")
	if failed != "" {
		t.Fatalf("qemu-nbd with bitmap b1: %s", failed)
	}
	out, err := exec.Command("nbdinfo", "--map=qemu:dirty-bitmap:b1", "nbd+unix:///vda?socket="+sock).CombinedOutput()
	if err != nil {
		t.Fatalf("nbdinfo: %v: %s", err, out)
	}
	if got := strings.Join(strings.Fields(string(out)), " "); got != "0 65536 0 clean 65536 65536 1 dirty 131072 917504 0 clean" {
		t.Errorf("dirty bitmap map = %q; want only 64 KiB at 64 KiB dirty", got)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	if _, _, failed := serve("nope"); !strings.Contains(failed, "Bitmap 'nope' is not found") {
		t.Errorf("qemu-nbd with a bitmap the image lacks: %s; want it refused", failed)
	}

	// A writer killed with the image open leaves the bitmap in use.
	w := exec.Command("qemu-io", "-f", "qcow2", img)
	wIn, err := w.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := fmt.Fprintln(wIn, "write -q 0 4k"); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		info, _ := exec.Command("qemu-img", "info", "-U", img).CombinedOutput()
		if strings.Contains(string(info), "in-use") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the bitmap never showed in use: %s", info)
		}
	}
	_ = w.Process.Kill()
	_ = w.Wait()
	if _, _, failed := serve("b1"); !strings.Contains(failed, "Bitmap 'b1' is inconsistent") {
		t.Errorf("qemu-nbd with an inconsistent bitmap: %s; want it refused", failed)
	}
}
