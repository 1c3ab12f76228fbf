#!/usr/bin/env bash
# Installs what Ferry's build and tests need on Debian 12: the Debian
# packages (libvirt, QEMU, sshd, nbd tools, a C toolchain for cgo) and the Go
# modules, including the pinned tools of go.mod's tool block. Idempotent: a
# second run checks and changes nothing, and `apt-get update` runs only when a
# package is missing. Installing packages needs root (or sudo).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

cd "$(dirname "${BASH_SOURCE[0]}")/.."

packages=(
	# runtime and test environment
	libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils
	openssh-server nbdkit libnbd-bin ovmf ca-certificates dbus
	# a kernel for test guests that boot (a guest agent answering libvirt)
	linux-image-amd64
	# building: cgo against libvirt, make itself
	libvirt-dev gcc libc6-dev pkg-config make git
)

installed() {
	[[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

missing=()
for p in "${packages[@]}"; do
	installed "$p" || missing+=("$p")
done

if ((${#missing[@]} > 0)); then
	echo "deps: installing ${missing[*]}"
	sudo=()
	if [[ $(id -u) -ne 0 ]]; then
		if ! command -v sudo >/dev/null; then
			echo "deps: missing packages ${missing[*]}; run this script as root" >&2
			exit 1
		fi
		sudo=(sudo -n)
	fi
	"${sudo[@]}" apt-get update -qq
	"${sudo[@]}" apt-get install -y -qq \
		-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
		"${missing[@]}"
else
	echo "deps: Debian packages present"
fi

# Go is not a Debian package here (go.mod needs a newer one than bookworm's).
if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then
	export PATH="$PATH:/usr/local/go/bin"
fi
if ! command -v go >/dev/null; then
	echo "deps: no Go toolchain on PATH; install Go $(awk '/^go /{print $2}' go.mod) or newer into /usr/local/go" >&2
	exit 1
fi

go mod download
# Build the pinned tools once so `go tool buf` etc. start from the build cache.
go build tool
echo "deps: Go modules and tools ready ($(go version))"
