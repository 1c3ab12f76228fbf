#!/usr/bin/env bash
# Builds a real Debian 12 guest disk configured as a VMware guest would be,
# for the guest conversion tests (agent/e2e/conversion_test.go):
#
#   scripts/debian-guest.sh OUT.qcow2
#
# debootstrap (minbase) from Debian's package repository onto a 2 GiB disk
# with one ext4 partition, the Debian kernel and GRUB (BIOS) on it, and:
#   - open-vm-tools installed (VMware's guest tools),
#   - its NIC configured by name as VMware's first vmxnet3 NIC is named,
#     ens192 (ifupdown, DHCP),
#   - an initramfs built with MODULES=dep on the loop device, so it holds no
#     virtio driver (the image fails the build if it does),
#   - the kernel and GRUB on the serial console, root without a password.
# OUT is left alone when it exists (the tests cache it under a fixed
# directory, see pkg/testenv.DebianGuest); it is written atomically. Needs
# root, debootstrap, qemu-img, sfdisk, losetup with partitions, and Debian's
# mirror (DEBIAN_MIRROR, default http://deb.debian.org/debian).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive LC_ALL=C

out=${1:?usage: scripts/debian-guest.sh OUT.qcow2}
if [[ -f $out ]]; then
	echo "debian-guest: $out exists"
	exit 0
fi
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$(dirname "$out")"
work=$(mktemp -d "$(dirname "$out")/build.XXXXXX")
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
truncate -s 2G "$raw"
echo 'start=2048, type=83, bootable' | sfdisk -q "$raw"
# The partition through a loop device at its offset: a container has no
# udev to make the nodes of a partitioned loop device.
loop=$(losetup -f --show -o $((2048 * 512)) --sizelimit $(((4194304 - 2048) * 512)) "$raw")
mkfs.ext4 -q -L root "$loop"
uuid=$(blkid -s UUID -o value "$loop")
mkdir -p "$root"
mount "$loop" "$root"

debootstrap --variant=minbase \
	--include=systemd-sysv,udev,kmod,ifupdown,isc-dhcp-client,iproute2,iputils-ping,procps,initramfs-tools,linux-image-amd64,grub-pc,open-vm-tools \
	bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
	tail -30 "$work/debootstrap.log" >&2
	exit 1
}
echo "debian-guest: debootstrap done in $((SECONDS - start)) s"

mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"
mount -t proc proc "$root/proc"
mount -t sysfs sys "$root/sys"

echo ferry-debian >"$root/etc/hostname"
cat >"$root/etc/fstab" <<EOF
UUID=$uuid / ext4 errors=remount-ro 0 1
EOF
cat >"$root/etc/network/interfaces" <<'EOF'
auto lo
iface lo inet loopback

# The VMware vmxnet3 NIC in PCI slot 192.
allow-hotplug ens192
iface ens192 inet dhcp
EOF
# Log in on the serial console as root, without a password.
sed -i 's/^root:[^:]*:/root::/' "$root/etc/shadow"
cat >"$root/etc/default/grub" <<'EOF'
GRUB_DEFAULT=0
GRUB_TIMEOUT=0
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8"
GRUB_TERMINAL=serial
GRUB_SERIAL_COMMAND="serial --speed=115200"
GRUB_DISABLE_OS_PROBER=true
EOF
# Smaller and faster to move: no drivers a VM never uses, no docs.
for kdir in "$root"/lib/modules/*; do
	rm -rf "$kdir"/kernel/drivers/{gpu,media,net/wireless,infiniband,staging,bluetooth,isdn,iio,input/touchscreen,video/fbdev} \
		"$kdir"/kernel/sound "$kdir"/kernel/net/{wireless,mac80211,bluetooth}
	chroot "$root" depmod -a "$(basename "$kdir")"
done
rm -rf "$root"/usr/share/{doc,man,locale,info}/* "$root"/var/lib/apt/lists/*
# Only the modules the build's root device needs (a loop device): no
# virtio disk or NIC driver, as on a guest installed on VMware.
echo MODULES=dep >"$root/etc/initramfs-tools/conf.d/ferry-modules"
chroot "$root" update-initramfs -u -k all >"$work/initramfs.log" 2>&1
chroot "$root" apt-get clean
initrd=$(ls "$root"/boot/initrd.img-* | head -1)
# (Listed first: under pipefail, grep -q stopping early would make the
# listing fail and the check never fire.)
mods=$(lsinitramfs "$initrd")
if grep -Eq '/(virtio_blk|virtio_scsi|virtio_net)\.ko' <<<"$mods"; then
	echo "debian-guest: the initramfs holds virtio disk or NIC drivers:" >&2
	grep virtio <<<"$mods" >&2
	exit 1
fi

for m in dev/pts dev proc sys; do umount "$root/$m"; done
umount "$root"
losetup -d "$loop"
loop=
# GRUB goes on the whole disk from libguestfs's appliance, where the disk
# is one device (under TCG: /dev/kvm may be there and not work); the
# appliance then discards what deleted files left, so the image holds only
# live data.
# Tried twice: once in a fresh machine's first build grub-install saw the
# appliance's own disk ("cross-disk install", ext2) and the second build
# of the same script went through.
grub() {
	LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg guestfish --rw >"$work/grub.log" 2>&1 <<GF
add $raw format:raw discard:enable
run
mount /dev/sda1 /
command "grub-install --target=i386-pc /dev/sda"
command "update-grub"
fstrim /
GF
}
if ! grub; then
	echo "debian-guest: installing GRUB failed; once more:" >&2
	cat "$work/grub.log" >&2
	if ! grub; then
		cat "$work/grub.log" >&2
		exit 1
	fi
fi
qemu-img convert -f raw -O qcow2 -S 64k "$raw" "$work/disk.qcow2"
mv "$work/disk.qcow2" "$out"
echo "debian-guest: $out built in $((SECONDS - start)) s ($(du -m "$out" | cut -f1) MiB)"
