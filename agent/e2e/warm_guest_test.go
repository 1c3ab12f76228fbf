package e2e

import (
	endian "encoding/binary"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/testenv"
	"github.com/ferry-v2v/ferry/pkg/testkit"
)

// powerKeyUnit powers the guest off when its ACPI power button is
// pressed: it waits until the "Power Button" input devices exist (on a
// loaded machine udev may make them after the unit starts: a unit that
// looked once found none, and the guest ignored the button), says so on
// the console, then waits for the first input event of each (24 bytes,
// one struct input_event) and runs systemctl poweroff, the clean shutdown
// systemd-logind or acpid would start. ($$ is systemd's escape of the
// shell's $.)
const powerKeyUnit = `[Unit]
Description=Power off on the ACPI power button (Ferry's warm cutover test)

[Service]
ExecStart=/bin/sh -c 'while :; do found=; for n in /sys/class/input/event*; do if grep -qs "Power Button" $$n/device/name && [ -e /dev/input/$${n##*/} ]; then found="$$found $${n##*/}"; fi; done; [ -n "$$found" ] && break; sleep 1; done; echo "` + powerKeyReady + ` on$$found" >/dev/console; for e in $$found; do (head -c 24 /dev/input/$$e >/dev/null && echo "power button pressed" >/dev/console && systemctl poweroff) & done; wait'

[Install]
WantedBy=multi-user.target
`

// powerKeyReady is what powerKeyUnit writes on the console once it
// listens to the power button.
const powerKeyReady = "ferry power button listener ready"

// installPowerKey installs powerKeyUnit, enabled, in the guest image disk
// (the source's overlay, before it starts): the Debian guest is a minbase
// install without D-Bus, so systemd-logind, which would act on the power
// button, does not run, and nothing else listens to it. The image is
// served writable as a raw file by qemu-storage-daemon's FUSE export and
// its first partition mounted through a loop device.
func installPowerKey(t *testing.T, disk string) {
	t.Helper()
	raw := filepath.Join(t.TempDir(), "disk.raw")
	must(t, os.WriteFile(raw, nil, 0o600)) // the mount point
	qsd := exec.Command(testenv.LookPath(t, "qemu-storage-daemon"),
		"--blockdev", "driver=file,node-name=file,filename="+disk,
		"--blockdev", "driver=qcow2,node-name=disk,file=file",
		"--export", "type=fuse,id=raw,node-name=disk,writable=on,mountpoint="+raw)
	var stderr strings.Builder
	qsd.Stderr = &stderr
	must(t, qsd.Start())
	defer func() {
		_ = syscall.Unmount(raw, 0)
		_ = qsd.Process.Signal(syscall.SIGTERM)
		_ = qsd.Wait()
	}()
	testkit.WaitFor(t, time.Minute, "the FUSE export of "+disk, func() bool {
		st, err := os.Stat(raw)
		return err == nil && st.Size() > 0
	})
	f, err := os.Open(raw)
	must(t, err)
	mbr := make([]byte, 512)
	_, err = io.ReadFull(f, mbr)
	f.Close()
	if err != nil || mbr[510] != 0x55 || mbr[511] != 0xaa {
		t.Fatalf("%s: no MBR: %v (qemu-storage-daemon: %s)", disk, err, stderr.String())
	}
	offset := int64(endian.LittleEndian.Uint32(mbr[446+8:])) * 512
	loop := strings.TrimSpace(testenv.Run(t, "losetup", "-f", "--show", "-o", strconv.FormatInt(offset, 10), raw))
	defer testenv.Run(t, "losetup", "-d", loop)
	mnt := t.TempDir()
	testenv.Run(t, "mount", "-t", "ext4", loop, mnt)
	unit := filepath.Join(mnt, "etc/systemd/system/ferry-power-key.service")
	err = os.WriteFile(unit, []byte(powerKeyUnit), 0o644)
	if err == nil {
		err = os.Symlink("/etc/systemd/system/ferry-power-key.service",
			filepath.Join(mnt, "etc/systemd/system/multi-user.target.wants/ferry-power-key.service"))
	}
	testenv.Run(t, "umount", mnt)
	must(t, err)
}

// TestWarmKVMDebianGuestShutdown: a warm job of the real Debian guest
// (testenv.DebianKVMGuest) running on a KVM source cuts over by a clean
// guest shutdown: the guest (given a listener of the power button, which
// its minbase install lacks: installPowerKey) honours the ACPI power
// button within the
// timeout, libvirt records the source shut off by its guest (reason
// shutdown, not destroyed) and the job carries no power-off warning; the
// last round reads the shut-off image with the previous round's bitmap,
// and the target disk (left stopped: auto_start false, so nothing wrote
// it since) equals the source's image after the shutdown byte for byte,
// its root file system clean (no journal to replay, as after a crash or
// a pause). No checkpoint or bitmap is left on the source.
func TestWarmKVMDebianGuestShutdown(t *testing.T) {
	t.Parallel() // see doc.go
	heavy(t)
	testenv.RequireRoot(t)
	testenv.LookPath(t, "debugfs")   // e2fsprogs
	img := testenv.DebianKVMGuest(t) // before the world: a first build takes minutes
	lv := testenv.RequireLibvirt(t)
	start := time.Now()
	src := startDebianKVMSource(t, lv, img, func(disk string) { installPowerKey(t, disk) })
	w := newWorld(t) // while the source boots
	const timeout = 5 * time.Minute
	w.shutdownTimeout(timeout)

	// The power button is heard once powerKeyUnit listens to it.
	testkit.WaitFor(t, 10*time.Minute, "the source's power button listener on its console", func() bool {
		b, _ := os.ReadFile(src.consoleLog)
		return strings.Contains(string(b), powerKeyReady)
	})
	t.Logf("the source booted %s after it started", time.Since(start).Round(time.Second))

	vm := w.sourceVM(w.source, src.name)
	spec := w.spec(vm, &ferryv1.MigrationOptions{Mode: ferryv1.MigrationMode_MIGRATION_MODE_WARM,
		PrecopyInterval: durationpb.New(10 * time.Second), AutoStart: proto.Bool(false)})
	name := w.createJob(spec)
	j := w.waitJob(name, 15*time.Minute, "precopy round 2", func(j *ferryv1.MigrationJob) bool {
		return terminal(j) || len(j.GetPrecopyRounds()) >= 2
	})
	if terminal(j) {
		t.Fatalf("job ended %s in %s: %s", j.GetState(), j.GetPhase(), j.GetReason())
	}
	if _, err := w.f.client.Jobs().CutoverMigrationJob(ctx(t, 10*time.Second), &ferryv1.CutoverMigrationJobRequest{Name: name}); err != nil {
		t.Fatal(err)
	}
	j = w.waitJob(name, 15*time.Minute, "the job to end", terminal)
	if j.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
		t.Fatalf("job ended %s in %s: %s", j.GetState(), j.GetPhase(), j.GetReason())
	}
	rs := j.GetPrecopyRounds()
	final := rs[len(rs)-1]
	t.Logf("%d rounds; final: changed %d, read %d, took %v; measured downtime %v (the guest's shutdown included)",
		len(rs), final.GetChangedBytes(), final.GetReadBytes(), final.GetDuration().AsDuration(), j.GetMeasuredDowntime().AsDuration())
	if st := strings.TrimSpace(lv.Virsh(t, "domstate", "--reason", src.name)); st != "shut off (shutdown)" {
		t.Errorf("source VM is %q; want shut off (shutdown): its guest shut down", st)
	}
	for _, wn := range j.GetWarnings() {
		if strings.Contains(wn, "powered off") {
			t.Errorf("warning %q; the guest shut down by itself", wn)
		}
	}
	if len(rs) < 3 || !final.GetFinal() {
		t.Errorf("rounds = %v; want the full one, a delta and the cutover's", rs)
	}
	disk := filepath.Join(testenv.ImagesDir, src.name, "disk.qcow2")
	vol := w.volume(name, "sda")
	compare(t, disk, vol)
	stats := openGuestDisk(t, vol).debugfs(t, "stats")
	if !regexp.MustCompile(`Filesystem state:\s+clean\s`).MatchString(stats) || strings.Contains(stats, "needs_recovery") {
		t.Errorf("the target's root file system is not clean after the guest shutdown:\n%s", tail(stats, 2000))
	}
	vmRef := &testenv.TestVM{Name: src.name, Disks: []testenv.TestDisk{{Target: "sda", Path: disk, Format: "qcow2"}}}
	if left := checkpoints(t, lv, vmRef); len(left) > 0 {
		t.Errorf("left on the source: %v", left)
	}
	t.Logf("TestWarmKVMDebianGuestShutdown took %v", time.Since(start).Round(time.Second))
}
