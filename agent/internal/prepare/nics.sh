#!/bin/sh
# Run inside the guest (guestfish's sh, chrooted in its root) with the
# target NICs' MACs in order: names each NIC as the guest's network
# configuration names the source NIC, so that the configuration (ifupdown,
# NetworkManager, systemd-networkd, netplan) applies to it on the target.
# Prints "ferry-nic: MAC NAME" for each NIC it named.
set -e
names=$(
	{
		for f in /etc/network/interfaces /etc/network/interfaces.d/*; do
			[ -f "$f" ] && sed -n 's/^[[:space:]]*\(auto\|allow-hotplug\|iface\)[[:space:]]\+\([^[:space:]]\+\).*/\2/p' "$f"
		done
		for f in /etc/NetworkManager/system-connections/*; do
			[ -f "$f" ] && sed -n 's/^[[:space:]]*interface-name[[:space:]]*=[[:space:]]*\([^[:space:]]\+\).*/\1/p' "$f"
		done
		for f in /etc/systemd/network/*.network; do
			[ -f "$f" ] && sed -n 's/^[[:space:]]*Name[[:space:]]*=[[:space:]]*\([^[:space:]]\+\).*/\1/p' "$f"
		done
		for f in /etc/netplan/*.yaml /etc/netplan/*.yml; do
			[ -f "$f" ] && sed -n 's/^[[:space:]]\+\([a-z][a-z0-9]*\):[[:space:]]*$/\1/p' "$f"
		done
	} 2>/dev/null | grep -E '^(en|eth)[a-z0-9]+$' | awk '!seen[$0]++'
) || true
for n in $names; do
	[ $# -gt 0 ] || break
	mac=$1
	shift
	mkdir -p /etc/systemd/network /etc/udev/rules.d
	printf '# Written by Ferry: the NIC with this MAC keeps the name the source NIC had.\n[Match]\nMACAddress=%s\n\n[Link]\nName=%s\n' "$mac" "$n" >"/etc/systemd/network/10-ferry-$n.link"
	printf 'SUBSYSTEM=="net", ACTION=="add", ATTR{address}=="%s", NAME="%s"\n' "$mac" "$n" >>/etc/udev/rules.d/70-persistent-net.rules
	echo "ferry-nic: $mac $n"
done
