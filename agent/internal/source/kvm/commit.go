package kvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strings"
	"sync"
	"time"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"
)

// commitPoll is how often a block commit's progress is looked at.
const commitPoll = 100 * time.Millisecond

// commitTimeout bounds one RestoreOriginals: a VM that wrote much while
// its disks were copied has much to merge back. A commit still running
// then is waited for again by the janitor's next round.
const commitTimeout = 30 * time.Minute

// overlayDisk is a disk of a domain that runs on one of Ferry's overlays.
type overlayDisk struct {
	target, overlay string
}

// onOverlays lists the disks of the domain's live definition (its
// persistent one when it is not running) whose image is an overlay that
// ours accepts.
func (c *Conn) onOverlays(uuid string, ours func(string) bool) ([]overlayDisk, error) {
	dom, err := c.virt.LookupDomainByUUIDString(uuid)
	if isNoDomain(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up VM %s: %w", uuid, err)
	}
	defer dom.Free()
	return overlaysOf(dom, 0, ours)
}

func overlaysOf(dom *libvirt.Domain, flags libvirt.DomainXMLFlags, ours func(string) bool) ([]overlayDisk, error) {
	desc, err := dom.GetXMLDesc(flags)
	if err != nil {
		return nil, fmt.Errorf("domain XML: %w", err)
	}
	var def libvirtxml.Domain
	if err := def.Unmarshal(desc); err != nil {
		return nil, fmt.Errorf("parse domain XML: %w", err)
	}
	var out []overlayDisk
	if def.Devices == nil {
		return nil, nil
	}
	for _, d := range def.Devices.Disks {
		if d.Target != nil && d.Source != nil && d.Source.File != nil && ours(d.Source.File.File) {
			out = append(out, overlayDisk{target: d.Target.Dev, overlay: d.Source.File.File})
		}
	}
	return out, nil
}

// RestoreOriginals puts every disk of the VM that runs on an overlay ours
// accepts back on its original image: a running or paused VM by an
// active block commit of the overlay into its backing image and a pivot
// (a commit already under way, left by a crash, is waited for and
// pivoted); a VM that is shut off (its host rebooted, say) by qemu-img
// commit over SSH and its definition pointed at the original again. The
// overlay files are left for the caller to remove. A VM that no longer
// exists has nothing to restore.
func (c *Conn) RestoreOriginals(ctx context.Context, uuid string, ours func(string) bool) error {
	// One restore of a VM at a time in this process: a restarted job's
	// CleanupStale and the janitor may both find the same overlays.
	unlock := restoring.lock(uuid)
	defer unlock()
	dom, err := c.virt.LookupDomainByUUIDString(uuid)
	if isNoDomain(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up VM %s: %w", uuid, err)
	}
	defer dom.Free()
	ctx, cancel := context.WithTimeout(ctx, commitTimeout)
	defer cancel()
	if active, err := dom.IsActive(); err == nil && !active {
		return c.restoreOffline(ctx, dom, ours)
	}
	disks, err := overlaysOf(dom, 0, ours)
	if err != nil {
		return err
	}
	for _, d := range disks {
		if err := c.commitDisk(ctx, dom, d); err != nil {
			return fmt.Errorf("disk %s: %w", d.target, err)
		}
	}
	// A persistent domain's definition follows the pivot; one still
	// naming an overlay (an old libvirt) is pointed at the original.
	if persistent, err := dom.IsPersistent(); err == nil && persistent {
		return c.restoreDefinition(ctx, dom, ours)
	}
	return nil
}

// commitDisk merges one disk's overlay into its backing image while the
// VM runs and pivots the VM onto it. Each step looks at what is there
// first, so a commit begun by an earlier run (or by a janitor beside this
// one) is finished, not begun again.
func (c *Conn) commitDisk(ctx context.Context, dom *libvirt.Domain, d overlayDisk) error {
	log := c.log.With("disk", d.target, "overlay", d.overlay)
	began := false
	var commitErr error
	for {
		on, err := overlaysOf(dom, 0, func(p string) bool { return p == d.overlay })
		if err != nil {
			return err
		}
		if len(on) == 0 {
			log.Info("block commit pivoted: the disk is on its original image again")
			return nil
		}
		info, err := dom.GetBlockJobInfo(d.target, 0)
		switch {
		case err != nil:
			return fmt.Errorf("block job of the disk: %w", err)
		case info.Type == 0:
			if !began {
				began = true
				// Another caller (the janitor beside a restarted job) may
				// have begun it a moment ago: look again before failing.
				// The overlay is named as the top: were the disk already
				// pivoted (by that other caller), libvirt refuses rather
				// than commit the original image into its own backing file.
				if err := dom.BlockCommit(d.target, "", d.overlay, c.cfg.CommitBandwidth,
					libvirt.DOMAIN_BLOCK_COMMIT_ACTIVE|libvirt.DOMAIN_BLOCK_COMMIT_SHALLOW); err != nil {
					log.Warn("begin the active block commit", "err", err)
					commitErr = err
				} else {
					log.Info("active block commit begun", "bandwidth_mib_s", c.cfg.CommitBandwidth)
				}
				continue
			}
			if commitErr != nil {
				return fmt.Errorf("begin the active block commit: %w", commitErr)
			}
		case info.Type != libvirt.DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT:
			return fmt.Errorf("the disk has a block job of type %d that is not Ferry's commit; end it first", info.Type)
		case info.End > 0 && info.Cur == info.End:
			if err := dom.BlockJobAbort(d.target, libvirt.DOMAIN_BLOCK_JOB_ABORT_PIVOT); err != nil {
				log.Debug("pivot not possible yet", "err", err)
			}
			continue
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("block commit did not finish: %w", ctx.Err())
		case <-time.After(commitPoll):
		}
	}
}

// restoreOffline merges the overlays of a shut-off VM with qemu-img and
// points its definition at the originals.
func (c *Conn) restoreOffline(ctx context.Context, dom *libvirt.Domain, ours func(string) bool) error {
	disks, err := overlaysOf(dom, libvirt.DOMAIN_XML_INACTIVE, ours)
	if err != nil || len(disks) == 0 {
		return err
	}
	for _, d := range disks {
		q := shellQuote(d.overlay)
		// A missing overlay was committed and removed before a crash
		// left the definition behind.
		if _, err := runRemote(ctx, c.ssh, "if [ -e "+q+" ]; then qemu-img commit -q "+q+"; fi"); err != nil {
			return fmt.Errorf("disk %s: merge the overlay while the VM is shut off: %w", d.target, err)
		}
		c.log.Info("overlay of a shut-off VM merged with qemu-img commit", "disk", d.target, "overlay", d.overlay)
	}
	return c.restoreDefinition(ctx, dom, ours)
}

// restoreDefinition points every disk of the persistent definition that
// names an overlay at the overlay's backing image again.
func (c *Conn) restoreDefinition(ctx context.Context, dom *libvirt.Domain, ours func(string) bool) error {
	desc, err := dom.GetXMLDesc(libvirt.DOMAIN_XML_INACTIVE | libvirt.DOMAIN_XML_SECURE)
	if err != nil {
		return fmt.Errorf("persistent domain XML: %w", err)
	}
	var def libvirtxml.Domain
	if err := def.Unmarshal(desc); err != nil {
		return fmt.Errorf("parse persistent domain XML: %w", err)
	}
	changed := false
	for i := range def.Devices.Disks {
		d := &def.Devices.Disks[i]
		if d.Source == nil || d.Source.File == nil || !ours(d.Source.File.File) {
			continue
		}
		orig, format, err := c.backingOf(ctx, d)
		if err != nil {
			return err
		}
		d.Source.File.File = orig
		d.BackingStore = nil
		if d.Driver != nil {
			d.Driver.Type = format
		}
		changed = true
	}
	if !changed {
		return nil
	}
	x, err := def.Marshal()
	if err != nil {
		return err
	}
	nd, err := c.virt.DomainDefineXML(x)
	if err != nil {
		return fmt.Errorf("define VM %s on its original images again: %w", def.Name, err)
	}
	nd.Free()
	c.log.Info("VM definition points at its original images again", "vm", def.Name)
	return nil
}

// backingOf is the original image (and its format) under an overlay
// disk: from the definition's backing store when it names one, else from
// the overlay file itself.
func (c *Conn) backingOf(ctx context.Context, d *libvirtxml.DomainDisk) (string, string, error) {
	if b := d.BackingStore; b != nil && b.Source != nil && b.Source.File != nil && b.Source.File.File != "" {
		format := "raw"
		if b.Format != nil && b.Format.Type != "" {
			format = b.Format.Type
		}
		return b.Source.File.File, format, nil
	}
	overlay := d.Source.File.File
	out, err := runRemote(ctx, c.ssh, "qemu-img info --output=json -U "+shellQuote(overlay))
	if err != nil {
		return "", "", fmt.Errorf("backing image of overlay %s: %w", overlay, err)
	}
	var info struct {
		Backing       string `json:"backing-filename"`
		FullBacking   string `json:"full-backing-filename"`
		BackingFormat string `json:"backing-filename-format"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		return "", "", fmt.Errorf("backing image of overlay %s: %w", overlay, err)
	}
	orig := info.FullBacking
	if orig == "" {
		orig = info.Backing
	}
	if orig != "" && !strings.HasPrefix(orig, "/") {
		orig = path.Join(path.Dir(overlay), orig)
	}
	if orig == "" {
		return "", "", errors.New("overlay " + overlay + " has no backing image")
	}
	if info.BackingFormat == "" {
		info.BackingFormat = "raw"
	}
	return orig, info.BackingFormat, nil
}

// restoring serialises RestoreOriginals per VM within the agent.
var restoring = &keyedMutex{held: map[string]chan struct{}{}}

type keyedMutex struct {
	mu   sync.Mutex
	held map[string]chan struct{}
}

// lock waits until no one holds key, takes it and returns its release.
func (k *keyedMutex) lock(key string) func() {
	for {
		k.mu.Lock()
		ch, busy := k.held[key]
		if !busy {
			ch = make(chan struct{})
			k.held[key] = ch
			k.mu.Unlock()
			return func() {
				k.mu.Lock()
				delete(k.held, key)
				k.mu.Unlock()
				close(ch)
			}
		}
		k.mu.Unlock()
		<-ch
	}
}
