//go:build integration

package testenv

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

func TestNewTestVM(t *testing.T) {
	lv := RequireLibvirt(t)
	vm := NewTestVM(t, lv, VMOptions{CDROMs: 1, NICs: 2, RandomBytes: 1 << 20})
	if got := vm.State(t); got != "running" {
		t.Fatalf("state = %q; want running", got)
	}
	if got := vm.JobType(t); got != "None" {
		t.Errorf("job type = %q; want None", got)
	}
	xml := lv.Virsh(t, "dumpxml", vm.Name)
	for _, want := range append([]string{vm.UUID, vm.Disks[0].Path, vm.Disks[1].Path}, vm.MACs...) {
		if !strings.Contains(xml, want) {
			t.Errorf("domain XML lacks %s:\n%s", want, xml)
		}
	}
	// Written extents read back with their pattern, holes as zeroes.
	for _, d := range vm.Disks {
		for _, e := range d.Extents {
			Run(t, "qemu-io", "-r", "-U", "-f", "qcow2", "-c",
				fmt.Sprintf("read -q -P 0x%02x %d %d", e.Pattern, e.Offset, e.Length), d.Path)
		}
	}
	Run(t, "qemu-io", "-r", "-U", "-f", "qcow2", "-c", "read -q -P 0 8M 1M", vm.Disks[1].Path)
	if len(vm.Disks[0].Random) != 1<<20 {
		t.Errorf("random data: %d bytes", len(vm.Disks[0].Random))
	}
}

func TestNewTestVMUEFI(t *testing.T) {
	lv := RequireLibvirt(t)
	vm := NewTestVM(t, lv, VMOptions{UEFI: true})
	if _, err := os.Stat(vm.NVRAM); err != nil {
		t.Errorf("NVRAM file: %v", err)
	}
	if got := vm.State(t); got != "running" {
		t.Fatalf("state = %q; want running", got)
	}
}

func TestStartSSHD(t *testing.T) {
	s := StartSSHD(t, SSHDOptions{PasswordUser: TestUser, Password: TestPassword})
	key := s.ClientConfig(t)
	c, err := ssh.Dial("tcp", s.Addr, key)
	if err != nil {
		t.Fatalf("key login as %s: %v", s.User, err)
	}
	out, err := runSession(c, "id -un")
	if err != nil || strings.TrimSpace(out) != "root" {
		t.Errorf("id -un = %q, %v; want root", out, err)
	}
	c.Close()

	pw := &ssh.ClientConfig{User: s.PasswordUser, Auth: []ssh.AuthMethod{ssh.Password(s.Password)},
		HostKeyCallback: key.HostKeyCallback}
	c, err = ssh.Dial("tcp", s.Addr, pw)
	if err != nil {
		t.Fatalf("password login as %s: %v", s.PasswordUser, err)
	}
	c.Close()

	pw.Auth = []ssh.AuthMethod{ssh.Password("wrong")}
	if c, err := ssh.Dial("tcp", s.Addr, pw); err == nil {
		c.Close()
		t.Error("a wrong password logged in")
	}
}

func runSession(c *ssh.Client, cmd string) (string, error) {
	s, err := c.NewSession()
	if err != nil {
		return "", err
	}
	defer s.Close()
	out, err := s.Output(cmd)
	return string(out), err
}

// A VM with a guest boots, and libvirt reads the guest's address from its
// guest agent.
func TestGuestAgentVM(t *testing.T) {
	lv := RequireLibvirt(t)
	vm := NewTestVM(t, lv, VMOptions{GuestIP: "10.213.7.42/24"})
	deadline := time.Now().Add(3 * time.Minute)
	for {
		out, err := lv.TryVirsh("domifaddr", "--source", "agent", vm.Name)
		if err == nil && strings.Contains(out, vm.MACs[0]) && strings.Contains(out, "10.213.7.42/24") {
			t.Logf("domifaddr:\n%s", out)
			return
		}
		if time.Now().After(deadline) {
			console, _ := os.ReadFile(vm.ConsoleLog)
			t.Fatalf("no guest address from the agent: %v %s\nconsole:\n%s", err, out, console)
		}
		time.Sleep(time.Second)
	}
}
