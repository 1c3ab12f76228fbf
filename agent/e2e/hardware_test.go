package e2e

import (
	"bufio"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"libvirt.org/go/libvirtxml"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"
)

// TestMigrateKeepsTheGuestsHardware: a q35 KVM VM with two virtio-blk
// disks that boots from its second disk (boot order 1 on vdb, whose boot
// sector prints which disk it is on the serial port) migrates to a target
// of the same machine family, the same bus per disk and the same boot
// disk, and the target boots it: its console says "FERRY BOOTED FROM
// vdb". (Before, the target was an i440fx machine booting vda, with
// virtio-scsi disks.)
func TestMigrateKeepsTheGuestsHardware(t *testing.T) {
	t.Parallel() // see doc.go
	w := newWorld(t)
	src := testenv.NewTestVM(t, w.lv, testenv.VMOptions{Machine: "q35", BootSector: true, BootDisk: 1})
	want := testenv.BootMessage("vdb")
	waitConsole(t, "the source", func() (string, error) {
		b, err := os.ReadFile(src.ConsoleLog)
		return string(b), err
	}, want)

	vm := w.sourceVM(w.source, src.Name)
	if !strings.Contains(vm.GetMachineType(), "q35") || len(vm.GetDisks()) != 2 || vm.GetDisks()[1].GetBootOrder() != 1 ||
		vm.GetDisks()[0].GetBus() != "virtio" {
		t.Fatalf("the source VM is described as %v", vm)
	}
	spec := w.spec(vm, nil)
	name := w.createJob(spec)
	job := w.waitJob(name, 3*time.Minute, "the job to end", terminal)
	if job.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
		t.Fatalf("job ended %s: %s", job.GetState(), job.GetReason())
	}
	for _, d := range src.Disks {
		compare(t, d.Path, w.volume(name, d.Target))
	}

	var dom libvirtxml.Domain
	if err := dom.Unmarshal(w.lv.Virsh(t, "dumpxml", spec.GetTarget().GetVmName())); err != nil {
		t.Fatal(err)
	}
	if m := dom.OS.Type.Machine; !strings.Contains(m, "q35") {
		t.Errorf("target machine = %s, want the q35 family", m)
	}
	var boots []string
	for _, d := range dom.Devices.Disks {
		if d.Device != "disk" {
			continue
		}
		if d.Target.Bus != "virtio" {
			t.Errorf("target disk %s is on bus %s, want virtio as at the source", d.Target.Dev, d.Target.Bus)
		}
		if d.Boot != nil && d.Boot.Order == 1 {
			boots = append(boots, d.Target.Dev+" "+d.Source.File.File)
		}
	}
	if len(boots) != 1 || !strings.HasPrefix(boots[0], "vdb ") || !strings.HasSuffix(boots[0], "/vdb.qcow2") {
		t.Errorf("target boot disks = %v, want vdb, the copy of the source's vdb", boots)
	}
	var pty string
	for _, s := range dom.Devices.Serials {
		if s.Source != nil && s.Source.Pty != nil {
			pty = s.Source.Pty.Path
		}
	}
	if pty == "" {
		t.Fatalf("the target has no serial pty to read: %v", dom.Devices.Serials)
	}
	waitConsole(t, "the target", readPTY(t, pty), want)
}

// waitConsole waits until read returns text holding want.
func waitConsole(t *testing.T, who string, read func() (string, error), want string) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		s, err := read()
		if err == nil && strings.Contains(s, want) {
			return
		}
		if err == nil {
			last = s
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("%s's console never said %q in 90 s; it said %q", who, want, tail(last, 200))
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// readPTY reads a domain's serial pty as it goes; each call returns what
// arrived so far.
func readPTY(t *testing.T, path string) func() (string, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open the console %s: %v", path, err)
	}
	t.Cleanup(func() { f.Close() })
	lines := make(chan string, 1024)
	go func() {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default: // the boot sector repeats itself: losing lines is fine
			}
		}
	}()
	var seen strings.Builder
	return func() (string, error) {
		for {
			select {
			case l := <-lines:
				seen.WriteString(l + "\n")
			default:
				return seen.String(), nil
			}
		}
	}
}
