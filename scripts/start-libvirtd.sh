#!/usr/bin/env bash
# Starts virtlogd and libvirtd without systemd, unless they already run, and
# waits until qemu:///system answers. Idempotent. Needs root.
#
# The system D-Bus starts first: libvirtd asks polkit (through it) whether a
# non-root user may connect, and polkit admits group libvirt. libvirtd
# looks for the bus once, so a libvirtd started before it admits root only.
set -euo pipefail

if [[ ! -S /run/dbus/system_bus_socket ]] && command -v dbus-daemon >/dev/null; then
	mkdir -p /run/dbus
	dbus-daemon --system --fork
fi
mkdir -p /run/libvirt
pgrep -x virtlogd >/dev/null || virtlogd -d
pgrep -x libvirtd >/dev/null || libvirtd -d

for _ in $(seq 1 100); do
	if virsh -c qemu:///system version >/dev/null 2>&1; then
		exit 0
	fi
	sleep 0.2
done
echo "start-libvirtd: libvirtd did not answer on qemu:///system within 20 s" >&2
exit 1
