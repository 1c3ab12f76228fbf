package kvm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"
)

// closeTimeout bounds the cleanup of a backup, which runs even when the
// caller's context is already cancelled.
const closeTimeout = time.Minute

// BackupOptions modify StartBackup.
type BackupOptions struct {
	// Pause suspends a running VM before the backup starts. It stays
	// paused afterwards; the operator resumes it.
	Pause bool
	// BeforeBegin, when set, is called with the named but not yet begun
	// backup; an error stops StartBackup before anything is made on the
	// source. The driver records there what to clean up after a crash.
	BeforeBegin func(b *Backup) error
	// Checkpoint, when set, names a libvirt checkpoint the backup creates
	// at its point in time: a persistent dirty bitmap on each backed-up
	// disk (qcow2 only), which a later backup's Incremental names.
	Checkpoint string
	// Incremental, when set, names the checkpoint the backup is taken
	// against: each export then also offers the block status context
	// qemu:dirty-bitmap:<ExportBitmap(target)> of what changed since.
	Incremental string
}

// Backup is a pull-mode backup job on the source: each disk is exported
// over NBD (export name = disk target) on a unix socket on the source
// host, frozen at the moment the job began, while the VM keeps running.
type Backup struct {
	conn    *Conn
	log     *slog.Logger
	vm      string
	uuid    string
	socket  string
	scratch []string // scratch file per target, same order
	targets []string
	bitmaps map[string]string // export bitmap by target, incremental only

	mu     sync.Mutex
	closed bool
}

// StartBackup begins a consistent copy of the named disks of a running or
// paused VM (all its disks when disks is empty). On the source host it
// uses SocketDir/ferry-backup-<uuid>-<id>.sock and one scratch file per
// disk, ScratchDir/ferry-backup-<uuid>-<id>-<target>.qcow2. Close ends it.
//
// qemu creates the socket as user libvirt-qemu, so reading it and removing
// the files needs an SSH user with those rights: root, as by default.
func (c *Conn) StartBackup(ctx context.Context, vmName string, disks []string, opts BackupOptions) (*Backup, error) {
	if err := checkBackupVersions(c.libVersion, c.qemuVersion); err != nil {
		return nil, fmt.Errorf("source %s: %w", c.cfg.hostPort(), err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	dom, err := c.domain(vmName)
	if err != nil {
		return nil, err
	}
	defer dom.Free()
	b, def, err := c.newBackup(dom, vmName, disks)
	if err != nil {
		return nil, err
	}
	if opts.BeforeBegin != nil {
		if err := opts.BeforeBegin(b); err != nil {
			return nil, err
		}
	}
	if opts.Pause {
		if err := b.pause(dom); err != nil {
			return nil, err
		}
	}
	doc, err := b.backupXML(def, opts.Incremental)
	if err != nil {
		return nil, err
	}
	ckpt := ""
	if opts.Checkpoint != "" {
		if ckpt, err = b.checkpointXML(def, opts.Checkpoint); err != nil {
			return nil, err
		}
	}
	if err := dom.BackupBegin(doc, ckpt, 0); err != nil {
		err = fmt.Errorf("begin backup of VM %s (an interrupted Ferry job's backup is ended by "+
			"CleanupStale): %w", vmName, err)
		return nil, errors.Join(err, b.removeFiles(ctx))
	}
	if err := b.readBitmaps(dom); err != nil {
		return nil, errors.Join(err, b.Close(ctx))
	}
	b.log.Info("backup started", "socket", b.socket, "disks", b.targets, "incremental", opts.Incremental, "checkpoint", opts.Checkpoint)
	return b, nil
}

// checkpointXML asks for a dirty bitmap on each backed-up disk.
func (b *Backup) checkpointXML(def *libvirtxml.Domain, name string) (string, error) {
	var disks []libvirtxml.DomainCheckpointDisk
	for _, d := range def.Devices.Disks {
		if d.Target == nil || d.Device == "cdrom" || d.Device == "floppy" {
			continue
		}
		mode := "no"
		if slices.Contains(b.targets, d.Target.Dev) {
			mode = "bitmap"
		}
		disks = append(disks, libvirtxml.DomainCheckpointDisk{Name: d.Target.Dev, Checkpoint: mode})
	}
	doc := libvirtxml.DomainCheckpoint{Name: name, Disks: &libvirtxml.DomainCheckpointDisks{Disks: disks}}
	out, err := doc.Marshal()
	if err != nil {
		return "", fmt.Errorf("checkpoint XML: %w", err)
	}
	return out, nil
}

// readBitmaps records the dirty bitmap each export of an incremental
// backup offers.
func (b *Backup) readBitmaps(dom *libvirt.Domain) error {
	desc, err := dom.BackupGetXMLDesc(0)
	if err != nil {
		return fmt.Errorf("backup job XML of VM %s: %w", b.vm, err)
	}
	var doc libvirtxml.DomainBackup
	if err := doc.Unmarshal(desc); err != nil {
		return fmt.Errorf("parse backup job XML of VM %s: %w", b.vm, err)
	}
	b.bitmaps = map[string]string{}
	if doc.Pull != nil && doc.Pull.Disks != nil {
		for _, d := range doc.Pull.Disks.Disks {
			if d.ExportBitmap != "" {
				b.bitmaps[d.Name] = d.ExportBitmap
			}
		}
	}
	return nil
}

// ExportBitmap is the dirty bitmap the export of target offers in an
// incremental backup ("" in a full one): its block status context is
// qemu:dirty-bitmap:<ExportBitmap>.
func (b *Backup) ExportBitmap(target string) string { return b.bitmaps[target] }

// newBackup checks the requested disks against the domain and names the
// backup's files.
func (c *Conn) newBackup(dom *libvirt.Domain, vmName string, disks []string) (*Backup, *libvirtxml.Domain, error) {
	desc, err := dom.GetXMLDesc(0)
	if err != nil {
		return nil, nil, fmt.Errorf("domain XML of VM %s: %w", vmName, err)
	}
	var def libvirtxml.Domain
	if err := def.Unmarshal(desc); err != nil {
		return nil, nil, fmt.Errorf("parse domain XML of VM %s: %w", vmName, err)
	}
	targets, err := backupTargets(&def, disks)
	if err != nil {
		return nil, nil, fmt.Errorf("VM %s: %w", vmName, err)
	}
	id := make([]byte, 4)
	if _, err := rand.Read(id); err != nil {
		return nil, nil, err
	}
	base := BackupPrefix + def.UUID + "-" + hex.EncodeToString(id)
	b := &Backup{conn: c, vm: vmName, uuid: def.UUID, targets: targets,
		socket: path.Join(c.cfg.SocketDir, base+".sock")}
	for _, t := range targets {
		b.scratch = append(b.scratch, path.Join(c.cfg.ScratchDir, base+"-"+t+".qcow2"))
	}
	b.log = c.log.With("vm", vmName, "backup", base)
	return b, &def, nil
}

// backupTargets returns the requested targets, or every disk with a
// source when none are requested.
func backupTargets(def *libvirtxml.Domain, want []string) ([]string, error) {
	var have []string
	if def.Devices != nil {
		for _, d := range def.Devices.Disks {
			if (d.Device == "" || d.Device == "disk" || d.Device == "lun") && d.Target != nil && d.Source != nil {
				have = append(have, d.Target.Dev)
			}
		}
	}
	if len(want) == 0 {
		if len(have) == 0 {
			return nil, errors.New("no disks to copy")
		}
		return have, nil
	}
	for _, t := range want {
		if !slices.Contains(have, t) {
			return nil, fmt.Errorf("no disk %q (disks: %s)", t, strings.Join(have, ", "))
		}
	}
	return slices.Clone(want), nil
}

// pause suspends a running domain; a paused one stays as it is.
func (b *Backup) pause(dom *libvirt.Domain) error {
	state, _, err := dom.GetState()
	if err != nil {
		return fmt.Errorf("state of VM %s: %w", b.vm, err)
	}
	if state != libvirt.DOMAIN_RUNNING {
		return nil
	}
	if err := dom.Suspend(); err != nil {
		return fmt.Errorf("pause VM %s: %w", b.vm, err)
	}
	b.log.Info("paused the VM before its backup; it stays paused")
	return nil
}

// backupXML lists every disk of the domain: the chosen ones with their
// scratch files, the others (CD-ROMs too) with backup='no'.
func (b *Backup) backupXML(def *libvirtxml.Domain, incremental string) (string, error) {
	var disks []libvirtxml.DomainBackupPullDisk
	for _, d := range def.Devices.Disks {
		if d.Target == nil {
			continue
		}
		i := slices.Index(b.targets, d.Target.Dev)
		if i < 0 {
			disks = append(disks, libvirtxml.DomainBackupPullDisk{Name: d.Target.Dev, Backup: "no"})
			continue
		}
		disks = append(disks, libvirtxml.DomainBackupPullDisk{
			Name: d.Target.Dev, Backup: "yes",
			Scratch: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: b.scratch[i]}},
		})
	}
	doc := libvirtxml.DomainBackup{Incremental: incremental, Pull: &libvirtxml.DomainBackupPull{
		Server: &libvirtxml.DomainBackupPullServer{UNIX: &libvirtxml.DomainBackupPullServerUNIX{Socket: b.socket}},
		Disks:  &libvirtxml.DomainBackupPullDisks{Disks: disks},
	}}
	out, err := doc.Marshal()
	if err != nil {
		return "", fmt.Errorf("backup XML: %w", err)
	}
	return out, nil
}

// Reattach moves the backup onto a new connection to the same source
// after the old one was lost. The backup job lives on the source
// regardless of its client's connection; Reattach fails when it is gone
// (libvirtd restarted, or someone aborted it) or is not this backup.
func (b *Backup) Reattach(c *Conn) error {
	dom, err := c.virt.LookupDomainByUUIDString(b.uuid)
	if err != nil {
		return fmt.Errorf("look up VM %s again: %w", b.vm, err)
	}
	defer dom.Free()
	socket, err := backupSocket(dom)
	if err != nil {
		return err
	}
	if socket != b.socket {
		return fmt.Errorf("the backup job of VM %s ended while the source was unreachable", b.vm)
	}
	b.mu.Lock()
	b.conn = c
	b.mu.Unlock()
	b.log.Info("backup reattached on a new source connection")
	return nil
}

// VM is the name of the backed-up VM; UUID its libvirt UUID.
func (b *Backup) VM() string { return b.vm }

// UUID is the backed-up VM's libvirt UUID.
func (b *Backup) UUID() string { return b.uuid }

// Targets are the disks the backup exports.
func (b *Backup) Targets() []string { return slices.Clone(b.targets) }

// Socket is the NBD socket's path on the source host.
func (b *Backup) Socket() string { return b.socket }

// ScratchFiles are the scratch files' paths on the source host.
func (b *Backup) ScratchFiles() []string { return slices.Clone(b.scratch) }

// OpenDisk opens a connection to the backup's NBD server through SSH; an
// NBD client reads it with the disk's target as export name.
func (b *Backup) OpenDisk(ctx context.Context, target string) (net.Conn, error) {
	if !slices.Contains(b.targets, target) {
		return nil, fmt.Errorf("backup of VM %s has no disk %q", b.vm, target)
	}
	b.mu.Lock()
	closed, c := b.closed, b.conn
	b.mu.Unlock()
	if closed {
		return nil, fmt.Errorf("backup of VM %s is closed", b.vm)
	}
	conn, err := c.ssh.DialContext(ctx, "unix", b.socket)
	if err != nil {
		return nil, fmt.Errorf("open NBD export %s of VM %s over SSH (socket %s; the SSH user must "+
			"be allowed to connect to it, as root is): %w", target, b.vm, b.socket, err)
	}
	return conn, nil
}

// Close ends the backup job and removes the socket and scratch files on
// the source host. It runs even when ctx is cancelled (bounded by a
// minute), may be called again after an error, and does nothing once it
// has succeeded.
func (b *Backup) Close(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), closeTimeout)
	defer cancel()
	err := b.conn.endBackupJob(ctx, b.uuid, func(sock string) bool { return sock == b.socket }, b.log)
	if err == nil {
		err = b.removeFiles(ctx)
	}
	if err != nil {
		return fmt.Errorf("end backup of VM %s: %w", b.vm, err)
	}
	b.closed = true
	b.log.Info("backup ended; socket and scratch files removed")
	return nil
}

// removeFiles removes the socket and scratch files on the source host.
func (b *Backup) removeFiles(ctx context.Context) error {
	args := []string{shellQuote(b.socket)}
	for _, s := range b.scratch {
		args = append(args, shellQuote(s))
	}
	_, err := runRemote(ctx, b.conn.ssh, "rm -f -- "+strings.Join(args, " "))
	return err
}

// endBackupJob aborts the domain's backup job when ours(socket) says the
// job's NBD socket is ours, and waits until the domain has no job. A
// domain that is gone has no job.
func (c *Conn) endBackupJob(ctx context.Context, uuid string, ours func(socket string) bool, log *slog.Logger) error {
	dom, err := c.virt.LookupDomainByUUIDString(uuid)
	if isNoDomain(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up VM %s: %w", uuid, err)
	}
	defer dom.Free()
	if active, err := dom.IsActive(); err == nil && !active {
		return nil // a shut-off VM has no job (a cold export's record)
	}
	socket, err := backupSocket(dom)
	if err != nil || socket == "" || !ours(socket) {
		return err
	}
	if err := dom.AbortJob(); err != nil && !isNoJob(err) {
		return fmt.Errorf("abort backup job: %w", err)
	}
	log.Info("backup job aborted", "socket", socket)
	for {
		info, err := dom.GetJobInfo()
		if isNoDomain(err) || (err == nil && info.Type == libvirt.DOMAIN_JOB_NONE) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("job of VM %s: %w", uuid, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("backup job of VM %s did not end: %w", uuid, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// backupSocket returns the NBD socket of the domain's running pull-mode
// backup job, or "" when it has none.
func backupSocket(dom *libvirt.Domain) (string, error) {
	desc, err := dom.BackupGetXMLDesc(0)
	if isNoBackup(err) || isNoDomain(err) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("backup job XML: %w", err)
	}
	var doc libvirtxml.DomainBackup
	if err := doc.Unmarshal(desc); err != nil {
		return "", fmt.Errorf("parse backup job XML: %w", err)
	}
	if doc.Pull == nil || doc.Pull.Server == nil || doc.Pull.Server.UNIX == nil {
		return "", nil // a push-mode or TCP backup: not Ferry's
	}
	return doc.Pull.Server.UNIX.Socket, nil
}

var uuidPattern = regexp.MustCompile(`^[0-9a-fA-F-]{32,36}$`)

// CleanupStale ends a backup job that an interrupted Ferry job left on
// the VM, puts the VM back on its original images when a snapshot's
// overlays are still under it (RestoreOriginals), and removes leftover Ferry sockets and scratch files of the VM
// on the source host. Backups that are not Ferry's are left alone. Run it
// before StartBackup when a job restarts after an agent crash; it also
// ends a Ferry backup that another live job runs on the same VM. A VM
// that no longer exists gives ErrNoVM (its libvirt jobs are gone too).
func (c *Conn) CleanupStale(ctx context.Context, vmName string) error {
	dom, err := c.domain(vmName)
	if err != nil {
		return err
	}
	uuid, err := dom.GetUUIDString()
	dom.Free()
	if err != nil {
		return fmt.Errorf("UUID of VM %s: %w", vmName, err)
	}
	if !uuidPattern.MatchString(uuid) {
		return fmt.Errorf("VM %s has an unexpected UUID %q", vmName, uuid)
	}
	log := c.log.With("vm", vmName)
	prefix := BackupPrefix + uuid + "-"
	ours := func(socket string) bool {
		return path.Dir(socket) == c.cfg.SocketDir && strings.HasPrefix(path.Base(socket), prefix)
	}
	if err := c.endBackupJob(ctx, uuid, ours, log); err != nil {
		return fmt.Errorf("end stale backup of VM %s: %w", vmName, err)
	}
	// A snapshot's overlays are merged back before they are removed.
	overlay := func(p string) bool {
		return path.Dir(p) == c.cfg.ScratchDir && strings.HasPrefix(path.Base(p), prefix)
	}
	if err := c.RestoreOriginals(ctx, uuid, overlay); err != nil {
		return fmt.Errorf("merge back a stale snapshot of VM %s: %w", vmName, err)
	}
	cmd := fmt.Sprintf("rm -f -- %s/%s* %s/%s*", shellQuote(c.cfg.SocketDir), prefix,
		shellQuote(c.cfg.ScratchDir), prefix)
	if _, err := runRemote(ctx, c.ssh, cmd); err != nil {
		return fmt.Errorf("remove stale backup files of VM %s: %w", vmName, err)
	}
	return nil
}

func isNoBackup(err error) bool {
	var lerr libvirt.Error
	return errors.As(err, &lerr) && lerr.Code == libvirt.ERR_NO_DOMAIN_BACKUP
}

func isNoJob(err error) bool {
	var lerr libvirt.Error
	return errors.As(err, &lerr) && lerr.Code == libvirt.ERR_OPERATION_INVALID
}
