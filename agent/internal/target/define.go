package target

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// Defaults of Options.
const (
	DefaultFirmwareDir = "/usr/share/OVMF"
	DefaultNVRAMDir    = "/var/lib/libvirt/qemu/nvram"
)

// ErrDomainExists: the target host has a domain of the VM's name that
// another job (or nobody from Ferry) defined.
var ErrDomainExists = errors.New("a domain of that name exists")

// Options are the target host's side of Define and Rollback.
type Options struct {
	// Commander deletes volumes on Rollback (default ExecCommander).
	Commander Commander
	// DomainType is "kvm" or "qemu"; empty: kvm when the host's libvirt
	// offers it for x86_64, qemu (TCG) otherwise.
	DomainType string
	// FirmwareDir holds OVMF_CODE*.fd and OVMF_VARS*.fd.
	FirmwareDir string
	// NVRAMDir is where UEFI variable stores are written,
	// <NVRAMDir>/<vm>_VARS.fd. It is a local path: the agent writes it,
	// so Define must run on the target host for UEFI VMs with NVRAM.
	NVRAMDir string
	// CephUser and CephSecretUUID authenticate RBD disks.
	CephUser, CephSecretUUID string
	// BootTimeout bounds the wait for the guest of a job with verify_boot
	// to show it booted (default DefaultBootTimeout); SerialLogDir is
	// where its serial console is logged (default DefaultSerialLogDir).
	BootTimeout  time.Duration
	SerialLogDir string
	// Remote, when its Targets is set, lets the driver run jobs whose VM
	// is placed on another host.
	Remote Remote

	Log *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.Commander == nil {
		o.Commander = ExecCommander{Log: o.Log}
	}
	if o.FirmwareDir == "" {
		o.FirmwareDir = DefaultFirmwareDir
	}
	if o.NVRAMDir == "" {
		o.NVRAMDir = DefaultNVRAMDir
	}
	if o.BootTimeout <= 0 {
		o.BootTimeout = DefaultBootTimeout
	}
	if o.SerialLogDir == "" {
		o.SerialLogDir = DefaultSerialLogDir
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	o.Log = o.Log.With("component", "target")
	return o
}

// Defined is a target VM that Define made.
type Defined struct {
	Name string
	UUID string
	// Started says the VM was started.
	Started bool
	// Warnings are for the operator of a job that succeeded, e.g. a VM
	// left stopped because the host lacked memory.
	Warnings []string
	// BootVerifiedBy says how the guest showed it booted, for a spec
	// with VerifyBoot (see WaitBoot).
	BootVerifiedBy string

	conn *libvirt.Connect
	spec Spec
	opts Options
}

// Rollback removes the domain, its NVRAM and DHCP entries, and the volumes.
func (d *Defined) Rollback(ctx context.Context) error {
	return rollback(ctx, d.conn, d.spec, d.opts)
}

// Define defines the target VM on the host behind conn: the domain (a
// leftover of an earlier attempt of the same job is replaced), its NVRAM
// file, DHCP host entries for NICs with addresses on libvirt networks.
// With spec.AutoStart it starts the VM; when the host lacks the memory or
// CPUs for it, the VM stays defined and stopped and Define returns a
// warning, not an error. With spec.VerifyBoot it starts the VM (a VM the
// host cannot start is an error then) and waits, up to opts.BootTimeout,
// for the guest to show it booted (WaitBoot). On error Define removes what it made, but not
// the volumes: Rollback does that.
func Define(ctx context.Context, conn *libvirt.Connect, spec Spec, opts Options) (_ *Defined, err error) {
	opts = opts.withDefaults()
	bo := BuildOptions{CephUser: opts.CephUser, CephSecretUUID: opts.CephSecretUUID}
	if bo.Type, err = domainType(conn, opts.DomainType); err != nil {
		return nil, err
	}
	if spec.firmware() == ferryv1.Firmware_FIRMWARE_UEFI {
		bo.UEFI = chooseUEFI(opts.FirmwareDir, len(spec.NVRAM))
		bo.NVRAMPath = nvramPath(opts, spec)
	}
	if spec.VerifyBoot {
		bo.SerialLog = serialLogPath(opts, spec)
	}
	dom, err := BuildDomain(spec, bo)
	if err != nil {
		return nil, err
	}
	desc, err := dom.Marshal()
	if err != nil {
		return nil, fmt.Errorf("domain XML: %w", err)
	}
	if err := removeOwnDomain(conn, spec, true); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			if uerr := undoDefine(conn, spec, opts); uerr != nil {
				opts.Log.WarnContext(ctx, "undo define", "vm", spec.VM.GetVmName(), "err", uerr)
			}
		}
	}()
	if err := writeNVRAM(bo.NVRAMPath, spec.NVRAM); err != nil {
		return nil, err
	}
	ld, err := conn.DomainDefineXMLFlags(desc, libvirt.DOMAIN_DEFINE_VALIDATE)
	if err != nil {
		return nil, fmt.Errorf("define domain %s: %w", dom.Name, err)
	}
	defer ld.Free()
	d := &Defined{Name: dom.Name, conn: conn, spec: spec, opts: opts, Warnings: spec.notes()}
	d.UUID, _ = ld.GetUUIDString()
	for _, h := range spec.dhcpHosts() {
		if err := addDHCPHost(conn, h); err != nil {
			return nil, err
		}
	}
	if spec.DeferStart {
		opts.Log.InfoContext(ctx, "defined target VM; it starts later", "vm", d.Name, "uuid", d.UUID, "type", bo.Type)
		return d, nil
	}
	if err := d.startAsAsked(ctx, ld, bo.SerialLog); err != nil {
		return nil, err
	}
	opts.Log.InfoContext(ctx, "defined target VM", "vm", d.Name, "uuid", d.UUID, "type", bo.Type, "started", d.Started)
	return d, nil
}

// startAsAsked starts the domain with spec.VerifyBoot or spec.AutoStart.
func (d *Defined) startAsAsked(ctx context.Context, ld *libvirt.Domain, serialLog string) error {
	var err error
	switch {
	case d.spec.VerifyBoot:
		err = startAndProve(ctx, d.conn, ld, d, serialLog)
	case d.spec.AutoStart:
		d.Started, err = start(ctx, ld, d, d.opts.Log)
	}
	return err
}

// StartDefined starts the VM Define made with spec.DeferStart, as
// spec.AutoStart and spec.VerifyBoot ask; the domain must be this job's.
// On error the domain stays: Rollback removes it.
func StartDefined(ctx context.Context, conn *libvirt.Connect, spec Spec, opts Options) (*Defined, error) {
	opts = opts.withDefaults()
	name := spec.VM.GetVmName()
	ld, err := conn.LookupDomainByName(name)
	if err != nil {
		return nil, fmt.Errorf("look up domain %s: %w", name, err)
	}
	defer ld.Free()
	meta, err := ld.GetMetadata(libvirt.DOMAIN_METADATA_ELEMENT, MetadataNamespace, libvirt.DOMAIN_AFFECT_CONFIG)
	if m, ours, _ := ParseMetadata(meta); err != nil || !ours || m.Job != spec.JobID {
		return nil, fmt.Errorf("%w: %s (not defined by job %s)", ErrDomainExists, name, spec.JobID)
	}
	d := &Defined{Name: name, conn: conn, spec: spec, opts: opts}
	d.UUID, _ = ld.GetUUIDString()
	serialLog := ""
	if spec.VerifyBoot {
		serialLog = serialLogPath(opts, spec)
	}
	if err := d.startAsAsked(ctx, ld, serialLog); err != nil {
		return nil, err
	}
	opts.Log.InfoContext(ctx, "started target VM", "vm", d.Name, "uuid", d.UUID, "started", d.Started)
	return d, nil
}

// startAndProve starts the domain and waits for its guest to show it
// booted (WaitBoot), recording how in d; a domain the host cannot start
// is an error here.
func startAndProve(ctx context.Context, conn *libvirt.Connect, ld *libvirt.Domain, d *Defined, serialLog string) (err error) {
	if err := removeSerialLog(d.opts, d.spec); err != nil {
		return err
	}
	before := leases(conn, d.spec)
	if d.Started, err = start(ctx, ld, d, d.opts.Log); err != nil {
		return err
	}
	if !d.Started {
		return fmt.Errorf("%w: %s", ErrNoBoot, d.Warnings[len(d.Warnings)-1])
	}
	if d.BootVerifiedBy, err = WaitBoot(ctx, conn, ld, d.spec, serialLog, before, d.opts.BootTimeout); err != nil {
		return err
	}
	d.opts.Log.InfoContext(ctx, "target VM booted", "vm", d.Name, "by", d.BootVerifiedBy)
	return nil
}

// start starts the domain. A start that fails for lack of host memory or
// CPUs adds a warning and leaves the domain stopped.
func start(ctx context.Context, ld *libvirt.Domain, d *Defined, log *slog.Logger) (bool, error) {
	err := ld.Create()
	if err == nil {
		return true, nil
	}
	if !lacksResources(err) {
		return false, fmt.Errorf("start domain %s: %w", d.Name, err)
	}
	msg := err.Error()
	var lerr libvirt.Error
	if errors.As(err, &lerr) {
		msg = lerr.Message
	}
	w := fmt.Sprintf("target VM %s is defined but stopped: the host lacks the resources to start it (%s)", d.Name, msg)
	log.WarnContext(ctx, "target VM not started", "vm", d.Name, "err", err)
	d.Warnings = append(d.Warnings, w)
	return false, nil
}

// lacksResources reports whether a start failed because the host has too
// little memory or too few CPUs, as QEMU and libvirt word it.
func lacksResources(err error) bool {
	return outputHas(nil, err,
		"cannot allocate memory", "cannot set up guest memory", "out of memory", "not enough memory",
		"insufficient", "exceeds the recommended cpus", "exceeds the maximum cpus", "maximum cpus",
		"too many vcpus", "requested vcpu")
}

// domainType is want, else kvm when libvirt offers it for x86_64 hvm.
func domainType(conn *libvirt.Connect, want string) (string, error) {
	if want != "" {
		return want, nil
	}
	desc, err := conn.GetCapabilities()
	if err != nil {
		return "", fmt.Errorf("libvirt capabilities: %w", err)
	}
	var caps libvirtxml.Caps
	if err := caps.Unmarshal(desc); err != nil {
		return "", fmt.Errorf("libvirt capabilities: %w", err)
	}
	for _, g := range caps.Guests {
		if g.OSType != "hvm" || g.Arch.Name != "x86_64" {
			continue
		}
		for _, d := range g.Arch.Domains {
			if d.Type == "kvm" {
				return "kvm", nil
			}
		}
	}
	return "qemu", nil
}

// chooseUEFI picks a non-Secure-Boot OVMF build whose variable store has
// the size of the source's NVRAM (4 MiB builds first); none found leaves
// the choice to libvirt.
func chooseUEFI(dir string, nvramSize int) Firmware {
	for _, suffix := range []string{"_4M", ""} {
		code := filepath.Join(dir, "OVMF_CODE"+suffix+".fd")
		vars := filepath.Join(dir, "OVMF_VARS"+suffix+".fd")
		cfi, cerr := os.Stat(code)
		vfi, verr := os.Stat(vars)
		if cerr != nil || verr != nil || !cfi.Mode().IsRegular() {
			continue
		}
		if nvramSize == 0 || vfi.Size() == int64(nvramSize) {
			return Firmware{Code: code, VarsTemplate: vars}
		}
	}
	return Firmware{}
}

func nvramPath(o Options, s Spec) string {
	return filepath.Join(o.NVRAMDir, s.VM.GetVmName()+"_VARS.fd")
}

// writeNVRAM writes the source's variable store, or removes a stale file
// so that libvirt copies the template.
func writeNVRAM(path string, nvram []byte) error {
	if path == "" {
		return nil
	}
	if len(nvram) == 0 {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove stale NVRAM: %w", err)
		}
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write NVRAM: %w", err)
	}
	if err := os.WriteFile(path, nvram, 0o600); err != nil {
		return fmt.Errorf("write NVRAM: %w", err)
	}
	return nil
}

// removeOwnDomain destroys and undefines (with its NVRAM) the domain of
// the spec's VM name when this job defined it. A domain of another job or
// of nobody from Ferry is refused when strict, kept otherwise.
func removeOwnDomain(conn *libvirt.Connect, spec Spec, strict bool) error {
	name := spec.VM.GetVmName()
	ld, err := conn.LookupDomainByName(name)
	if isCode(err, libvirt.ERR_NO_DOMAIN) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up domain %s: %w", name, err)
	}
	defer ld.Free()
	meta, err := ld.GetMetadata(libvirt.DOMAIN_METADATA_ELEMENT, MetadataNamespace, libvirt.DOMAIN_AFFECT_CONFIG)
	m, ours, _ := ParseMetadata(meta)
	if err != nil || !ours || m.Job != spec.JobID {
		if strict {
			return fmt.Errorf("%w: %s (not defined by job %s)", ErrDomainExists, name, spec.JobID)
		}
		return errForeignDomain
	}
	if active, _ := ld.IsActive(); active {
		if err := ld.Destroy(); err != nil && !isCode(err, libvirt.ERR_OPERATION_INVALID) {
			return fmt.Errorf("stop domain %s: %w", name, err)
		}
	}
	flags := libvirt.DOMAIN_UNDEFINE_NVRAM | libvirt.DOMAIN_UNDEFINE_MANAGED_SAVE |
		libvirt.DOMAIN_UNDEFINE_SNAPSHOTS_METADATA | libvirt.DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
	if err := ld.UndefineFlags(flags); err != nil && !isCode(err, libvirt.ERR_NO_DOMAIN) {
		return fmt.Errorf("undefine domain %s: %w", name, err)
	}
	return nil
}

// errForeignDomain: the VM name belongs to a domain this job did not define.
var errForeignDomain = errors.New("foreign domain")

// undoDefine removes what Define made: the job's domain, its NVRAM file
// and DHCP host entries.
func undoDefine(conn *libvirt.Connect, spec Spec, opts Options) error {
	var errs []error
	switch err := removeOwnDomain(conn, spec, false); {
	case errors.Is(err, errForeignDomain):
		// Its NVRAM file is not ours to remove.
	case err != nil:
		errs = append(errs, err)
	default:
		errs = append(errs, removeSerialLog(opts, spec))
		if spec.firmware() == ferryv1.Firmware_FIRMWARE_UEFI {
			if err := os.Remove(nvramPath(opts, spec)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, fmt.Errorf("remove NVRAM: %w", err))
			}
		}
	}
	for _, h := range spec.dhcpHosts() {
		errs = append(errs, removeDHCPHost(conn, h))
	}
	return errors.Join(errs...)
}

// Rollback removes everything a job may have made on the target, in any
// phase: its domain (only if Ferry's metadata names this job) with NVRAM,
// its DHCP host entries and its volumes. It works from the spec alone, so
// it also cleans up after an agent that crashed; calling it again is
// harmless. conn may be nil when no domain was ever defined.
func Rollback(ctx context.Context, conn *libvirt.Connect, spec Spec, opts Options) error {
	return rollback(ctx, conn, spec, opts.withDefaults())
}

func rollback(ctx context.Context, conn *libvirt.Connect, spec Spec, opts Options) error {
	var errs []error
	if conn != nil {
		errs = append(errs, undoDefine(conn, spec, opts))
	}
	for _, v := range spec.Volumes {
		errs = append(errs, v.Delete(ctx, opts.Commander))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("roll back %s: %w", spec.VM.GetVmName(), err)
	}
	opts.Log.InfoContext(ctx, "rolled back target", "vm", spec.VM.GetVmName(), "volumes", len(spec.Volumes))
	return nil
}
