#!/usr/bin/env bash
# make demo: a real migration on this machine, with the embedded one-node
# coordinator. It installs what it needs, starts libvirtd and an sshd on a
# loopback port (the "source KVM host"), a coordinator and an agent (the
# "target host"), creates a small running VM with a root and a data disk
# holding known data, migrates it with ferryctl while drawing live progress
# bars, and shows the target domain and a byte-for-byte comparison of the
# disks.
#
#   scripts/demo.sh          run the demo (again: it starts from scratch)
#   scripts/demo.sh stop     stop what the demo started and remove its files
#
# Everything lives under $FERRY_DEMO_DIR (default /var/tmp/ferry-demo) and
# /var/lib/libvirt/images/ferry-demo*. Needs root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DEMO=${FERRY_DEMO_DIR:-/var/tmp/ferry-demo}
IMAGES=/var/lib/libvirt/images/ferry-demo
TARGET_STORAGE=/var/lib/libvirt/images/ferry-demo-target
API=127.0.0.1:17443
RAFT=127.0.0.1:17444
SSH_PORT=17422
VM=ferry-demo-web
NET=ferry-demo
BIN=$PWD/bin

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

stop() {
	for p in agent coordinator sshd; do
		if [[ -f $DEMO/$p.pid ]]; then
			kill "$(cat "$DEMO/$p.pid")" 2>/dev/null || true
			rm -f "$DEMO/$p.pid"
		fi
	done
	for dom in "$VM" "$VM-migrated"; do
		virsh -q destroy "$dom" >/dev/null 2>&1 || true
		virsh -q undefine --nvram "$dom" >/dev/null 2>&1 || true
	done
	virsh -q net-destroy "$NET" >/dev/null 2>&1 || true
	# A bridge left without its network (libvirtd killed with the demo
	# running) keeps the name and the subnet the network needs.
	ip link del vbrferrydemo >/dev/null 2>&1 || true
	sleep 1
	rm -rf "$DEMO" "$IMAGES" "$TARGET_STORAGE"
}

if [[ ${1:-} == stop ]]; then
	stop
	echo "demo stopped and removed"
	exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
	echo "demo: run as root (it starts libvirtd and sshd and defines VMs)" >&2
	exit 1
fi

say "Installing what the demo needs (idempotent), then building"
scripts/deps.sh demo
export PATH=$PATH:/usr/local/go/bin
make --no-print-directory build
export LIBVIRT_DEFAULT_URI=qemu:///system
scripts/start-libvirtd.sh

say "Starting from scratch in $DEMO"
stop
# The demo's ports must be free: a process of an earlier demo run from
# another checkout (or anything else) holding one would make this run's
# server fail to start.
# (A process stop just signalled may take a few seconds to let go.)
listening() { [[ -n $(ss -Hltn "sport = :$1" 2>/dev/null) ]]; }
for port in "${API##*:}" "${RAFT##*:}" "$SSH_PORT"; do
	for _ in $(seq 1 50); do
		listening "$port" || break
		sleep 0.2
	done
	if listening "$port"; then
		echo "demo: port $port on 127.0.0.1 is in use; the demo needs it:" >&2
		ss -ltnp "sport = :$port" >&2 || true
		echo "demo: stop that process (an earlier demo: scripts/demo.sh stop from its checkout) and run again" >&2
		exit 1
	fi
done
mkdir -p "$DEMO" "$IMAGES" "$TARGET_STORAGE" "$DEMO/cache"

say "Source host: sshd on 127.0.0.1:$SSH_PORT with a generated host key and login key"
ssh-keygen -q -t ed25519 -N '' -C ferry-demo-host -f "$DEMO/ssh_host_ed25519_key"
ssh-keygen -q -t ed25519 -N '' -C ferry-demo-login -f "$DEMO/login_key"
cp "$DEMO/login_key.pub" "$DEMO/authorized_keys"
chmod 600 "$DEMO/authorized_keys"
mkdir -p /run/sshd
cat >"$DEMO/sshd_config" <<EOF
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $DEMO/ssh_host_ed25519_key
PidFile $DEMO/sshd.pid
AuthorizedKeysFile $DEMO/authorized_keys
StrictModes no
UsePAM no
PermitRootLogin prohibit-password
PasswordAuthentication no
AllowStreamLocalForwarding yes
AllowTcpForwarding yes
EOF
/usr/sbin/sshd -f "$DEMO/sshd_config" -E "$DEMO/sshd.log"

say "Source VM $VM: a 1 GiB root disk (96 MiB of data, part random) and a 4 GiB data disk that is mostly holes"
qemu-img create -q -f qcow2 "$IMAGES/root.qcow2" 1G
qemu-img create -q -f qcow2 "$IMAGES/data.qcow2" 4G
head -c $((32 << 20)) /dev/urandom >"$DEMO/random.bin"
qemu-io -f qcow2 -c 'write -P 0x5a 0 64M' "$IMAGES/root.qcow2" >/dev/null
qemu-io -f qcow2 -c "write -s $DEMO/random.bin 128M 32M" "$IMAGES/root.qcow2" >/dev/null
for off in 1M 1G 3G; do qemu-io -f qcow2 -c "write -P 0x11 $off 1M" "$IMAGES/data.qcow2" >/dev/null; done
chown -R libvirt-qemu:libvirt-qemu "$IMAGES" 2>/dev/null || true
cat >"$DEMO/$VM.xml" <<EOF
<domain type='qemu'>
  <name>$VM</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$IMAGES/root.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$IMAGES/data.qcow2'/><target dev='vdb' bus='virtio'/></disk>
    <interface type='user'><mac address='52:54:00:fe:00:01'/><model type='virtio'/></interface>
    <graphics type='vnc' listen='127.0.0.1' autoport='yes'/>
  </devices>
</domain>
EOF
virsh -q define "$DEMO/$VM.xml" >/dev/null
virsh -q start "$VM" >/dev/null
virsh domstate "$VM"

say "Target network $NET (a libvirt network with DHCP)"
cat >"$DEMO/net.xml" <<EOF
<network><name>$NET</name><bridge name='vbrferrydemo'/>
<ip address='10.123.0.1' netmask='255.255.255.0'><dhcp><range start='10.123.0.100' end='10.123.0.200'/></dhcp></ip></network>
EOF
virsh -q net-create "$DEMO/net.xml" >/dev/null

say "Coordinator: the embedded one-node default on $API"
"$BIN/ferry-coordinator" --data-dir "$DEMO/coordinator" --listen "$API" --raft-listen "$RAFT" \
	>"$DEMO/coordinator.log" 2>&1 &
echo $! >"$DEMO/coordinator.pid"
# The embedded default made its PKI in DATA_DIR/tls: ferryctl uses the
# operator's directory of it.
export FERRY_SERVER=$API FERRY_TLS_DIR=$DEMO/coordinator/tls/operator
ctl() { "$BIN/ferryctl" "$@"; }
# alive NAME: fails, with the end of NAME's log, once NAME's process is
# gone (a wait below then ends at once instead of running out).
alive() {
	kill -0 "$(cat "$DEMO/$1.pid")" 2>/dev/null && return 0
	echo "demo: the $1 exited; the end of $DEMO/$1.log:" >&2
	tail -n 20 "$DEMO/$1.log" >&2
	exit 1
}
for _ in $(seq 1 100); do alive coordinator; ctl members list >/dev/null 2>&1 && break; sleep 0.2; done
ctl members list

say "Agent on this host (the migration server and target host), with its own certificate"
# --domain-type qemu: the demo's target runs under TCG, like its source, so
# it works where /dev/kvm is missing or does not work (nested VMs).
# An agent's certificate names its host (ferry://agent/demo-host): it can
# only say hello as demo-host, and carries ca.crt and its own pair only.
"$BIN/ferry-coordinator" tls issue --dir "$DEMO/coordinator/tls" --role agent --host demo-host
"$BIN/ferry-agent" --coordinator "$API" --host-name demo-host --cluster demo --data-dir "$DEMO/agent" \
	--cache-path "$DEMO/cache" --tls-dir "$DEMO/coordinator/tls/agents/demo-host" --domain-type qemu >"$DEMO/agent.log" 2>&1 &
echo $! >"$DEMO/agent.pid"
for _ in $(seq 1 100); do alive agent; ctl host get demo-host 2>/dev/null | grep -q true && break; sleep 0.2; done
ctl host list

say "Inventory: cluster, primary storage, L3 network, credential, source, migration server"
ctl cluster create demo --display-name "Demo cluster"
ctl storage create local --cluster demo --type local --path "$TARGET_STORAGE"
ctl network create lan --cluster demo --libvirt-network "$NET" \
	--ip-range 10.123.0.10-10.123.0.99 --gateway 10.123.0.1 --prefix-length 24
ctl credential create kvm-key --private-key-file "$DEMO/login_key"
ctl source create kvm-src --type kvm --address 127.0.0.1 --port "$SSH_PORT" --user root \
	--credential kvm-key --host-key-file "$DEMO/ssh_host_ed25519_key.pub"
ctl server create kvm-1 --host demo-host --type kvm --cache-path "$DEMO/cache"

say "What the source has (through the agent, over SSH)"
ctl source vms kvm-src

say "What migrating $VM would make and use (nothing is created)"
ctl job preview --source kvm-src --migration-server kvm-1 --vm "$VM" --target-name "$VM-migrated" \
	--cluster demo --storage local --network lan

say "Migrating $VM (its shape read from the source), with live progress"
# --yes: the script's standard input cannot answer "Create 1 job(s)? [y/N]".
# The JSON holds the preview (jobs without names) and the created jobs.
job=$(ctl job create --source kvm-src --migration-server kvm-1 --vm "$VM" --target-name "$VM-migrated" \
	--cluster demo --storage local --network lan --yes -o json | sed -n 's/.*"name": *"\(migrationJobs\/[^"]*\)".*/\1/p' | head -n1)
echo "job $job"
ctl job watch "$job" || true

say "Result"
ctl job get "$job"
virsh dominfo "$VM-migrated" | grep -E 'Name|State|CPU\(s\)|Max memory'
virsh domblklist "$VM-migrated"
virsh domiflist "$VM-migrated"
id=${job#migrationJobs/}
status=0
for d in vda:root vdb:data; do
	printf 'qemu-img compare %-5s ' "${d%%:*}"
	if qemu-img compare -U "$IMAGES/${d#*:}.qcow2" "$TARGET_STORAGE/$id/${d%%:*}.qcow2"; then :; else status=1; fi
done
printf '\nsource %s is %s; the target %s-migrated is %s\n' "$VM" "$(virsh domstate "$VM")" "$VM" "$(virsh domstate "$VM-migrated")"
echo "Everything is still running; explore with FERRY_SERVER=$API FERRY_TLS_DIR=$FERRY_TLS_DIR bin/ferryctl ..."
echo "Stop and remove it all with: scripts/demo.sh stop"
exit $status
