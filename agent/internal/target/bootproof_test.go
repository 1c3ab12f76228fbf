package target

import (
	"context"
	"os"
	"testing"
	"time"

	"libvirt.org/go/libvirt"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"
)

// TestWaitBootByGuestAgent: a VM whose guest runs a QEMU guest agent (a
// booting test VM: the host's kernel and guestinit) is proven booted by
// the agent's answer, with no serial log and no NIC on a libvirt network
// to look at.
func TestWaitBootByGuestAgent(t *testing.T) {
	lv := testenv.RequireLibvirt(t)
	vm := testenv.NewTestVM(t, lv, testenv.VMOptions{GuestIP: "10.231.7.5/24"})
	conn, err := libvirt.NewConnect(lv.URI)
	if err != nil {
		t.Fatalf("connect %s: %v", lv.URI, err)
	}
	t.Cleanup(func() { conn.Close() })
	ld, err := conn.LookupDomainByName(vm.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer ld.Free()
	start := time.Now()
	by, err := WaitBoot(context.Background(), conn, ld, Spec{VM: &ferryv1.TargetVm{VmName: vm.Name}}, "", nil, 4*time.Minute)
	if err != nil {
		console, _ := os.ReadFile(vm.ConsoleLog)
		t.Fatalf("WaitBoot: %v; guest console:\n%s", err, console)
	}
	if want := "guest agent: it answered " + GuestAgentChannel; by != want {
		t.Errorf("boot verified by %q, want %q", by, want)
	}
	t.Logf("the guest agent answered after %s", time.Since(start).Round(time.Second))
}

// TestConsoleLine: the proof quotes the first whole line of printable text,
// terminal control sequences and firmware lines aside.
func TestConsoleLine(t *testing.T) {
	path := t.TempDir() + "/serial.log"
	if got := consoleLine(path); got != "" {
		t.Errorf("no file: %q", got)
	}
	for _, tt := range []struct{ data, want string }{
		{"", ""},
		{"\r\n \x1b\x00\r\n", ""},
		{"\x1bc\r\nFERRY BOOTED FROM vdb\r\nmore\r\n", "FERRY BOOTED FROM vdb"},
		{"no newline yet", ""},
		{"FERRY BOOTED FROM vdb\r\nFERRY", "FERRY BOOTED FROM vdb"},
		{"\x1b[2J\x1b[01;01H\x1b[=3h\x1b[2J\x1b[01;01HBdsDxe: failed to load Boot0001 \"UEFI QEMU HARDDISK\": Not Found\r\n" +
			">>Start PXE over IPv4.\r\nSeaBIOS (version 1.16)\r\n\x1b[0mLinux version 6.1.0\r\n", "Linux version 6.1.0"},
		// GRUB's lines are the boot loader's, not the guest's.
		{"\x1b[0m\x1b[30m\x1b[47mWelcome to GRUB!\r\n\r\n  Booting `Debian GNU/Linux'\r\n\r\nLoading Linux 6.1.0-50-amd64 ...\r\n" +
			"Loading initial ramdisk ...\r\n", ""},
		{"  Booting `Debian GNU/Linux'\r\nerror: no such device: 1c7f.\r\nPress any key to continue...\r\n" +
			"[    0.000000] Linux version 6.1.0-50-amd64\r\n", "[    0.000000] Linux version 6.1.0-50-amd64"},
	} {
		if err := os.WriteFile(path, []byte(tt.data), 0o600); err != nil {
			t.Fatal(err)
		}
		if got := consoleLine(path); got != tt.want {
			t.Errorf("consoleLine(%q) = %q, want %q", tt.data, got, tt.want)
		}
	}
}
