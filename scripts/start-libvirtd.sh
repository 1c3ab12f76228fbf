#!/usr/bin/env bash
# Starts the system D-Bus, virtlogd and libvirtd without systemd, unless they
# already run, and waits until qemu:///system answers. Idempotent. Needs root.
#
# Order matters: libvirtd asks polkit (over the system bus) whether a
# non-root user may connect, and polkit admits group libvirt. libvirtd looks
# for the bus once and remembers a failure, so a libvirtd that started
# before the bus admits root only: it is restarted here. A machine whose
# processes were killed leaves /run/dbus/pid and the bus socket behind; a
# socket nobody listens on counts as no bus.
set -euo pipefail

# Test packages run in parallel and each may call this: one at a time.
mkdir -p /run/lock
exec 9>/run/lock/ferry-start-libvirtd.lock
flock 9

# bus_pid prints the pid of the system bus daemon if the bus answers.
bus_pid() {
	dbus-send --system --print-reply --reply-timeout=2000 --dest=org.freedesktop.DBus \
		/org/freedesktop/DBus org.freedesktop.DBus.GetId >/dev/null 2>&1 || return 0
	cat /run/dbus/pid 2>/dev/null || true
}

# daemon CMD...: starts a self-forking daemon without the lock or this
# script's output (a caller may wait for those to close), logging to
# /var/log/ferry-NAME.log.
daemon() { "$@" </dev/null >>"/var/log/ferry-$(basename "$1").log" 2>&1 9>&-; }

# live NAME prints the oldest live (not zombie) process called NAME.
live() { pgrep -o -x -r D,I,R,S "$1"; }

# started PID: when the process started, in clock ticks since boot
# (/proc/PID/stat field 22; the command name before it may hold spaces).
started() { sed 's/.*) //' /proc/"$1"/stat | awk '{print $20}'; }

if command -v dbus-daemon >/dev/null && [[ -z "$(bus_pid)" ]]; then
	echo "start-libvirtd: starting the system D-Bus"
	mkdir -p /run/dbus
	rm -f /run/dbus/pid /run/dbus/system_bus_socket
	daemon dbus-daemon --system --fork
fi

# /dev/kvm belongs to group kvm (udev's rule). A package installed into a
# chroot whose kvm group has another id can chgrp the host's node; libvirt
# that probed QEMU with KVM usable then finds it unusable and probes QEMU
# again on every call (tens of seconds each on a busy machine).
if [[ -c /dev/kvm ]] && getent group kvm >/dev/null && [[ "$(stat -c %G /dev/kvm)" != kvm ]]; then
	echo "start-libvirtd: /dev/kvm is group $(stat -c %G /dev/kvm); giving it back to group kvm"
	chgrp kvm /dev/kvm
	chmod 0660 /dev/kvm
fi

mkdir -p /run/libvirt
live virtlogd >/dev/null || daemon virtlogd -d

if lpid=$(live libvirtd); then
	bpid=$(bus_pid)
	if [[ -n "$bpid" ]] && (($(started "$lpid") < $(started "$bpid"))); then
		echo "start-libvirtd: libvirtd $lpid started before the system D-Bus; restarting it"
		kill "$lpid"
		for _ in $(seq 1 100); do
			[[ "$(live libvirtd)" == "$lpid" ]] || break
			sleep 0.1
		done
		rm -f /run/libvirtd.pid
	fi
fi
live libvirtd >/dev/null || daemon libvirtd -d

for _ in $(seq 1 100); do
	if virsh -c qemu:///system version >/dev/null 2>&1; then
		exit 0
	fi
	sleep 0.2
done
echo "start-libvirtd: libvirtd did not answer on qemu:///system within 20 s" >&2
exit 1
