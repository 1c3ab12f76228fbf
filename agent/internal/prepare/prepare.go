// Package prepare adapts a guest to KVM on a job's cache images (the
// PREPARING phase), with virt-v2v-in-place and libguestfs: virtio drivers
// in the initramfs, VMware tools removed, fstab and bootloader device
// names, Windows virtio drivers from a virtio-win ISO, and the guest's
// network configuration kept on the target NIC (nics.go).
//
// It never writes a cache image: each disk gets a qcow2 overlay backed by
// its cache image (cache.PreparedPath), made under a temporary name and
// renamed into place only once the whole conversion succeeded. A failure
// removes the overlays, so the cache stays as CONVERTING made it and a
// restart with guest_conversion OFF uploads it unchanged. virt-v2v's whole
// output is kept in the job's cache directory (LogName).
package prepare

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
	"github.com/ferry-v2v/ferry/agent/internal/runner"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// LogName is virt-v2v-in-place's log in the job's cache directory, beside
// the cache images; the job's failure reason quotes its error.
const LogName = "virt-v2v.log"

// Programs, replaceable by tests.
var (
	virtV2V   = "virt-v2v-in-place"
	guestfish = "guestfish"
	qemuImg   = "qemu-img"
)

// Converter is the runner's Preparer.
type Converter struct {
	log *slog.Logger
}

var _ runner.Preparer = (*Converter)(nil)

// New returns a Converter logging to log.
func New(log *slog.Logger) *Converter {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Converter{log: log}
}

// ConversionError is a conversion virt-v2v-in-place refused or failed;
// Reason is its own message.
type ConversionError struct {
	Reason string
	Log    string // the log's path
}

func (e *ConversionError) Error() string {
	return "virt-v2v-in-place: " + e.Reason + " (log " + e.Log + ")"
}

// Prepare converts the job's guest. See the package comment.
func (c *Converter) Prepare(ctx context.Context, job *runner.Job) (_ *ferryv1.GuestInspection, err error) {
	dir := job.CacheDir
	disks := job.Assignment.GetJob().GetTarget().GetDisks()
	if len(disks) == 0 {
		return nil, errors.New("the job keeps no disk to convert")
	}
	var work []string // the overlays being converted, root first
	defer func() {
		if err != nil {
			for _, w := range work {
				_ = os.Remove(w)
			}
		}
	}()
	for _, d := range disks {
		img, format, err := cache.ImagePath(dir, d.GetSourceDisk())
		if err != nil {
			return nil, err
		}
		w := filepath.Join(dir, d.GetSourceDisk()+".preparing.qcow2")
		_ = os.Remove(w)
		work = append(work, w)
		if out, err := exec.CommandContext(ctx, qemuImg, "create", "-q", "-f", "qcow2", "-F", format, "-b", img, w).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("overlay of disk %s: %w: %s", d.GetSourceDisk(), err, bytes.TrimSpace(out))
		}
	}
	log := job.Log.With("phase", "PREPARING")
	start := time.Now()
	// The network first: virt-v2v rebuilds the initramfs after it, with
	// the names pinned. A guest that has no OS is left to virt-v2v's
	// inspection to refuse, with its reason.
	nicChanges, nicErr := pinNICNames(ctx, work, targetMACs(job))
	if nicErr != nil {
		log.WarnContext(ctx, "guest network names left as they were", "err", nicErr)
	}
	logPath := filepath.Join(dir, LogName)
	in, err := runV2V(ctx, work, logPath, job.Assignment.GetMigrationServer().GetVirtioWinIso())
	if err != nil {
		return nil, err
	}
	in.Changes = append(in.Changes, nicChanges...)
	for i, d := range disks {
		if err := os.Rename(work[i], cache.PreparedPath(dir, d.GetSourceDisk())); err != nil {
			return nil, fmt.Errorf("converted image of disk %s: %w", d.GetSourceDisk(), err)
		}
	}
	work = nil
	log.InfoContext(ctx, "guest converted", "os", in.GetProductName(), "firmware", in.GetFirmware(),
		"changes", strings.Join(in.GetChanges(), "; "), "seconds", time.Since(start).Seconds(), "log", logPath)
	return in, nil
}

// targetMACs is the MAC of each target NIC, in the job's order.
func targetMACs(job *runner.Job) []string {
	var out []string
	for _, n := range job.Assignment.GetJob().GetTarget().GetNics() {
		mac := n.GetMac()
		if mac == "" {
			mac = n.GetSourceMac()
		}
		out = append(out, strings.ToLower(mac))
	}
	return out
}

// libguestfsEnv is the environment of libguestfs's tools: the direct
// backend (no libvirt session for the appliance) unless the agent's
// environment says otherwise. LIBGUESTFS_BACKEND_SETTINGS=force_tcg there
// runs the appliance without KVM.
func libguestfsEnv() []string {
	env := os.Environ()
	if os.Getenv("LIBGUESTFS_BACKEND") == "" {
		env = append(env, "LIBGUESTFS_BACKEND=direct")
	}
	return env
}

// groupCommand is exec.CommandContext in a process group of its own, all
// of which a cancelled ctx kills: libguestfs's appliance (a qemu child of
// virt-v2v or guestfish) must not outlive a cancelled job.
func groupCommand(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	return cmd
}

// runV2V runs virt-v2v-in-place on the overlays, its output into logPath,
// and reads the inspection from it.
func runV2V(ctx context.Context, disks []string, logPath, virtioWin string) (*ferryv1.GuestInspection, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("virt-v2v log: %w", err)
	}
	defer f.Close()
	args := append([]string{"-v", "-i", "disk", "-if", "qcow2"}, disks...)
	cmd := groupCommand(ctx, virtV2V, args...)
	cmd.Env = libguestfsEnv()
	if virtioWin != "" {
		cmd.Env = append(cmd.Env, "VIRTIO_WIN="+virtioWin)
	}
	cmd.Stdout, cmd.Stderr = f, f
	fmt.Fprintf(f, "ferry: %s %s\n", virtV2V, strings.Join(args, " "))
	runErr := cmd.Run()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	data, err := os.ReadFile(logPath)
	if err != nil {
		return nil, fmt.Errorf("virt-v2v log: %w", err)
	}
	if runErr != nil {
		reason := v2vError(data)
		if reason == "" {
			reason = runErr.Error()
		}
		return nil, &ConversionError{Reason: reason, Log: logPath}
	}
	return parseInspection(data), nil
}
