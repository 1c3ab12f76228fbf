#!/usr/bin/env bash
# Derives from the Debian test guest (scripts/debian-guest.sh, configured
# as on VMware) the same guest as installed on a KVM host, for the test
# that migrates it from a KVM source (agent/e2e/kvmguest_test.go):
#
#   scripts/debian-kvm-guest.sh BASE.qcow2 OUT.qcow2
#
# OUT is a qcow2 image of BASE changed only where a guest installed on a
# q35 machine with a SATA disk and an e1000e NIC differs from one
# installed on VMware:
#   - its initramfs holds that hardware's disk drivers (ahci, sd_mod) and
#     ext4, as MODULES=dep would make it there, and still no virtio;
#   - its NIC is configured by the name Debian gives that NIC on the first
#     PCIe root port, enp1s0 (ifupdown, DHCP).
# open-vm-tools stays installed (harmless on KVM, where it does not
# start): the test checks that a migration without conversion left it.
# The initramfs is made in a chroot of the guest's file system on the host
# (seconds; libguestfs's appliance under TCG took minutes). OUT is left
# alone when it exists; it is written atomically. Needs root, qemu-img and
# losetup.
set -euo pipefail
export LC_ALL=C

base=${1:?usage: scripts/debian-kvm-guest.sh BASE.qcow2 OUT.qcow2}
out=${2:?usage: scripts/debian-kvm-guest.sh BASE.qcow2 OUT.qcow2}
if [[ -f $out ]]; then
	echo "debian-kvm-guest: $out exists"
	exit 0
fi
mkdir -p "$(dirname "$out")"
work=$(mktemp -d "$(dirname "$out")/build-kvm.XXXXXX")
root=$work/root
loop=
cleanup() {
	for m in dev/pts dev proc sys; do umount "$root/$m" 2>/dev/null || true; done
	umount "$root" 2>/dev/null || true
	[[ -n $loop ]] && losetup -d "$loop" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

start=$SECONDS
raw=$work/disk.raw
qemu-img convert -f qcow2 -O raw "$base" "$raw"
# The root partition, as scripts/debian-guest.sh made it: one partition
# from sector 2048 to the end.
offset=$(($(sfdisk -d "$raw" | sed -n 's/.*start= *\([0-9]*\),.*/\1/p' | head -1) * 512))
loop=$(losetup -f --show -o "$offset" "$raw")
mkdir -p "$root"
mount "$loop" "$root"
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"
mount -t proc proc "$root/proc"
mount -t sysfs sys "$root/sys"

echo MODULES=list >"$root/etc/initramfs-tools/conf.d/ferry-modules"
printf '%s\n' ahci sd_mod ext4 crc32c_generic >"$root/etc/initramfs-tools/modules"
chroot "$root" update-initramfs -u -k all >"$work/initramfs.log" 2>&1 || {
	cat "$work/initramfs.log" >&2
	exit 1
}
cat >"$root/etc/network/interfaces" <<'EOF'
auto lo
iface lo inet loopback

# The e1000e NIC on the q35 machine's first PCIe root port.
allow-hotplug enp1s0
iface enp1s0 inet dhcp
EOF
initrd=$(ls "$root"/boot/initrd.img-* | head -1)
mods=$(lsinitramfs "$initrd")
if ! grep -q '/ahci\.ko' <<<"$mods" || grep -q 'virtio_blk\|virtio_scsi' <<<"$mods"; then
	echo "debian-kvm-guest: the initramfs lacks ahci or holds a virtio disk driver:" >&2
	grep '\.ko' <<<"$mods" >&2
	exit 1
fi

for m in dev/pts dev proc sys; do umount "$root/$m"; done
umount "$root"
losetup -d "$loop"
loop=
# A whole image, not an overlay on BASE: qemu-img would copy every
# cluster into one anyway (convert -B does not compare with the backing).
qemu-img convert -f raw -O qcow2 -S 64k "$raw" "$work/disk.qcow2"
mv "$work/disk.qcow2" "$out"
echo "debian-kvm-guest: $out made in $((SECONDS - start)) s ($(du -m "$out" | cut -f1) MiB)"
