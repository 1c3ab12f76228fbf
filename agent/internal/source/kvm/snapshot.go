package kvm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path"
	"slices"
	"strings"
	"sync"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/ferry-v2v/ferry/agent/internal/pipeline"
	"github.com/ferry-v2v/ferry/pkg/kvmver"
)

// Snapshot is the snapshot copy method's hold on a running or paused VM
// whose host has no backup API (libvirt < 6.0 or QEMU < 4.2): an external
// disk-only snapshot (--disk-only --atomic --no-metadata, quiesced by the
// guest agent when the guest has a connected one) moves the VM's writes
// onto overlays, ScratchDir/ferry-backup-<uuid>-<id>-<target>.qcow2, so
// its original images stay as they were at the snapshot; they are read
// read-only like a shut-off VM's (the cold export's qemu-nbd servers, or
// the image file itself with its allocation map where qemu-nbd is
// missing). Close merges each overlay back into its original with an
// active block commit and pivot, and removes the overlays: the VM is on
// its original images again.
//
// What a crash leaves (overlays still under the VM, a commit under way)
// is finished by RestoreOriginals, which CleanupStale and the leftovers
// janitor call.
type Snapshot struct {
	conn     *Conn
	vm, uuid string
	export   *ColdExport // the originals' reader
	overlays []string    // per exported disk, same order
	quiesced bool
	// files, when set, read the originals without qemu-nbd, by target.
	files map[string]*ImageFile

	mu     sync.Mutex
	closed bool
}

// StartSnapshot takes the snapshot of the named disks of vm (all when
// disks is empty) and starts reading their original images. beforeBegin,
// when set, is called before anything is made on the source; its error
// stops StartSnapshot.
func (c *Conn) StartSnapshot(ctx context.Context, vm *VM, disks []string, beforeBegin func(*Snapshot) error) (*Snapshot, error) {
	e, err := c.newColdExport(vm, disks)
	if err != nil {
		return nil, err
	}
	s := &Snapshot{conn: c, vm: vm.Name, uuid: vm.UUID, export: e}
	for _, sock := range e.sockets {
		s.overlays = append(s.overlays, path.Join(c.cfg.ScratchDir, strings.TrimSuffix(path.Base(sock), ".sock")+".qcow2"))
	}
	e.log = c.log.With("vm", vm.Name, "snapshot", strings.TrimSuffix(path.Base(s.overlays[0]), "-"+e.disks[0].Target+".qcow2"))
	if beforeBegin != nil {
		if err := beforeBegin(s); err != nil {
			return nil, err
		}
	}
	if err := s.take(ctx); err != nil {
		return nil, errors.Join(err, s.Close(ctx))
	}
	if err := s.read(ctx, c); err != nil {
		return nil, errors.Join(err, s.Close(ctx))
	}
	reader := "qemu-nbd"
	switch {
	case s.files != nil:
		reader = "image files (qemu-img map)"
	case e.sudo:
		reader = "qemu-nbd through sudo"
	}
	e.log.Info("snapshot taken; reading the original images", "overlays", s.overlays, "quiesced", s.quiesced,
		"reader", reader, "sockets", e.sockets)
	return s, nil
}

// take creates the external disk-only snapshot.
func (s *Snapshot) take(ctx context.Context) error {
	dom, err := s.conn.virt.LookupDomainByUUIDString(s.uuid)
	if err != nil {
		return fmt.Errorf("look up VM %s: %w", s.vm, err)
	}
	defer dom.Free()
	desc, err := dom.GetXMLDesc(0)
	if err != nil {
		return fmt.Errorf("domain XML of VM %s: %w", s.vm, err)
	}
	var def libvirtxml.Domain
	if err := def.Unmarshal(desc); err != nil {
		return fmt.Errorf("parse domain XML of VM %s: %w", s.vm, err)
	}
	doc := libvirtxml.DomainSnapshot{Name: strings.TrimSuffix(path.Base(s.overlays[0]), ".qcow2"),
		Description: "Ferry migration: merged back and removed when the copy ends", Disks: &libvirtxml.DomainSnapshotDisks{}}
	for _, d := range def.Devices.Disks {
		if d.Target == nil {
			continue
		}
		i := slices.IndexFunc(s.export.disks, func(x Disk) bool { return x.Target == d.Target.Dev })
		if i < 0 {
			doc.Disks.Disks = append(doc.Disks.Disks, libvirtxml.DomainSnapshotDisk{Name: d.Target.Dev, Snapshot: "no"})
			continue
		}
		doc.Disks.Disks = append(doc.Disks.Disks, libvirtxml.DomainSnapshotDisk{Name: d.Target.Dev, Snapshot: "external",
			Driver: &libvirtxml.DomainDiskDriver{Type: "qcow2"},
			Source: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: s.overlays[i]}}})
	}
	x, err := doc.Marshal()
	if err != nil {
		return err
	}
	flags := libvirt.DOMAIN_SNAPSHOT_CREATE_DISK_ONLY | libvirt.DOMAIN_SNAPSHOT_CREATE_ATOMIC | libvirt.DOMAIN_SNAPSHOT_CREATE_NO_METADATA
	// A paused guest's agent cannot answer a freeze.
	if state, _, err := dom.GetState(); err == nil && state == libvirt.DOMAIN_RUNNING && guestAgentConnected(&def) {
		snap, qerr := dom.CreateSnapshotXML(x, flags|libvirt.DOMAIN_SNAPSHOT_CREATE_QUIESCE)
		if qerr == nil {
			snap.Free()
			s.quiesced = true
			return nil
		}
		s.export.log.Warn("the guest agent could not freeze the guest's filesystems; taking the snapshot without", "err", qerr)
	}
	snap, err := dom.CreateSnapshotXML(x, flags)
	if err != nil {
		return fmt.Errorf("external disk-only snapshot of VM %s: %w", s.vm, err)
	}
	snap.Free()
	return ctx.Err()
}

// pause suspends a running VM before its snapshot, as the job asks; it
// stays paused afterwards (the operator resumes it).
func (c *Conn) pause(name string) error {
	dom, err := c.domain(name)
	if err != nil {
		return err
	}
	defer dom.Free()
	state, _, err := dom.GetState()
	if err != nil {
		return fmt.Errorf("state of VM %s: %w", name, err)
	}
	if state != libvirt.DOMAIN_RUNNING {
		return nil
	}
	if err := dom.Suspend(); err != nil {
		return fmt.Errorf("pause VM %s: %w", name, err)
	}
	c.log.Info("paused the VM before its snapshot; it stays paused", "vm", name)
	return nil
}

// guestAgentConnected says whether the domain has a QEMU guest agent
// channel whose agent is connected.
func guestAgentConnected(def *libvirtxml.Domain) bool {
	if def.Devices == nil {
		return false
	}
	for _, ch := range def.Devices.Channels {
		if ch.Target != nil && ch.Target.VirtIO != nil && ch.Target.VirtIO.Name == "org.qemu.guest_agent.0" {
			return ch.Target.VirtIO.State == "connected"
		}
	}
	return false
}

// read starts the readers of the original images over c: a read-only
// qemu-nbd per disk where the source host has qemu-nbd from QEMU 2.10
// (and the configuration does not ask for the image files), else the
// image files themselves with their allocation maps.
func (s *Snapshot) read(ctx context.Context, c *Conn) error {
	// Below QEMU 2.10 qemu-nbd has no force-share, which reading an
	// image QEMU holds open needs; the image files are read instead.
	files := c.cfg.ImageFileReader || c.qemuVersion.Less(kvmver.MinQEMUCold)
	if !files {
		if _, err := runRemote(ctx, c.ssh, "command -v qemu-nbd"); err != nil {
			files = true
		}
	}
	if !files {
		return s.export.serve(ctx, c)
	}
	s.files = map[string]*ImageFile{}
	for _, d := range s.export.disks {
		f, err := openImageFile(ctx, s.currentConn, d)
		if err != nil {
			return err
		}
		s.files[d.Target] = f
	}
	return nil
}

func (s *Snapshot) currentConn() *Conn {
	s.export.mu.Lock()
	defer s.export.mu.Unlock()
	return s.export.conn
}

// ImageSource is the reader of a disk's original image when the snapshot
// reads the image files, nil when it serves them through qemu-nbd.
func (s *Snapshot) ImageSource(target string) pipeline.Source {
	if f, ok := s.files[target]; ok {
		return f
	}
	return nil
}

// VM is the VM's name.
func (s *Snapshot) VM() string { return s.vm }

// Overlays are the overlay files' paths on the source host.
func (s *Snapshot) Overlays() []string { return slices.Clone(s.overlays) }

// OpenDisk opens a disk's original image, as it was at the snapshot.
func (s *Snapshot) OpenDisk(ctx context.Context, target string) (net.Conn, error) {
	return s.export.OpenDisk(ctx, target)
}

// Reattach serves the original images again over a new connection to the
// source; the VM must still be on the overlays (nothing merged them back
// while the source was unreachable).
func (s *Snapshot) Reattach(c *Conn) error {
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	on, err := c.onOverlays(s.uuid, s.isOverlay)
	if err != nil {
		return err
	}
	if len(on) != len(s.overlays) {
		return fmt.Errorf("VM %s is no longer on the snapshot's overlays (%d of %d)", s.vm, len(on), len(s.overlays))
	}
	s.export.mu.Lock()
	old := s.export.servers
	s.export.servers = nil
	if s.files != nil {
		s.export.conn = c
	}
	s.export.mu.Unlock()
	for _, srv := range old {
		srv.stop(ctx)
	}
	if s.files == nil {
		if err := s.export.serve(ctx, c); err != nil {
			return err
		}
	}
	s.conn = c
	s.export.log.Info("original images served again on a new source connection")
	return nil
}

func (s *Snapshot) isOverlay(p string) bool { return slices.Contains(s.overlays, p) }

// Close stops reading the originals, merges the overlays back (block
// commit and pivot) and removes them. It runs even when ctx is cancelled
// (bounded by closeTimeout per step), may be called again after an error,
// and does nothing once it has succeeded.
func (s *Snapshot) Close(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	ctx = context.WithoutCancel(ctx)
	if err := s.export.Close(ctx); err != nil {
		return err
	}
	c := s.export.conn
	if err := c.RestoreOriginals(ctx, s.uuid, s.isOverlay); err != nil {
		return fmt.Errorf("merge the snapshot of VM %s back: %w", s.vm, err)
	}
	if err := removeFiles(ctx, c, s.overlays); err != nil {
		return fmt.Errorf("remove the snapshot overlays of VM %s: %w", s.vm, err)
	}
	s.closed = true
	s.export.log.Info("snapshot merged back; the VM is on its original images and the overlays are removed")
	return nil
}

// leftoverOf is the snapshot as a leftover record sees it: the readers'
// sockets and the overlays are its files; the janitor merges the
// overlays back (RestoreOriginals) before it removes them.
func (s *Snapshot) leftoverOf() *Backup {
	b := s.export.leftoverOf()
	b.scratch = append(b.scratch, s.overlays...)
	return b
}
