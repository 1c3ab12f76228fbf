package kvmver

import (
	"fmt"
	"strings"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// WarmRefusal says why a KVM VM cannot be migrated warm (options.mode
// WARM), or "" when it can: a disk the job copies (copies(target), or
// every disk when copies is nil) that is not qcow2 (a raw file, a block
// device, an RBD image) cannot carry the persistent dirty bitmaps of
// libvirt checkpoints that find what changed between rounds, and a VM
// that is shut off has no running QEMU to take the rounds' backups.
func WarmRefusal(vm *ferryv1.SourceVm, copies func(target string) bool) string {
	if why := BitmapRefusal(vm, copies); why != "" {
		return why
	}
	if vm.GetState() == ferryv1.SourceVmState_SOURCE_VM_STATE_SHUT_OFF {
		return "warm migration copies a running VM in rounds, but it is shut off (use mode live for a one-time copy)"
	}
	return ""
}

// BitmapRefusal is WarmRefusal for the disks alone: it says why a disk
// the job copies cannot carry dirty bitmaps, or "". A warm job's cutover
// that shut the VM off reads its last delta from the shut-off images, so
// only their bitmaps matter then.
func BitmapRefusal(vm *ferryv1.SourceVm, copies func(target string) bool) string {
	var bad []string
	for _, d := range vm.GetDisks() {
		if copies != nil && !copies(d.GetTarget()) {
			continue
		}
		if d.GetFormat() != "qcow2" {
			f := d.GetFormat()
			if f == "" {
				f = "format unknown"
			}
			bad = append(bad, fmt.Sprintf("%s (%s)", d.GetTarget(), f))
		}
	}
	if len(bad) > 0 {
		return "warm migration needs qcow2 disks, whose dirty bitmaps track the changes between rounds; disk " +
			strings.Join(bad, ", ") + " cannot carry dirty bitmaps (use mode live, or convert the disk to qcow2)"
	}
	return ""
}
