#!/usr/bin/env bash
# Installs what Ferry's build, demo and tests need on Debian 12. Idempotent:
# a second run checks and changes nothing, and `apt-get update` runs only when
# a package is missing. Installing packages needs root (or sudo without a
# password); without them it stops at once and says what to run.
#
#   scripts/deps.sh          everything: the Debian packages (libvirt, QEMU,
#                            sshd, nbd tools, a C toolchain for cgo), the Go
#                            modules and the pinned tools of go.mod's tool block
#   scripts/deps.sh build    what `make build` needs: Go, and a C toolchain and
#                            libvirt's headers for cgo (`make build` runs this)
#   scripts/deps.sh demo     what `make demo` needs: every Debian package, no
#                            pinned tools (scripts/demo.sh runs this)
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

cd "$(dirname "${BASH_SOURCE[0]}")/.."

mode=${1:-all}
case $mode in
all | build | demo) ;;
*)
	echo "usage: scripts/deps.sh [build|demo]" >&2
	exit 2
	;;
esac

# Go is not a Debian package here (go.mod needs a newer one than bookworm's):
# check it first, before any long install.
if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then
	export PATH="$PATH:/usr/local/go/bin"
fi
if ! command -v go >/dev/null; then
	echo "deps: no Go toolchain; install Go $(awk '/^go /{print $2}' go.mod) or newer into /usr/local/go (https://go.dev/dl/), then run this again" >&2
	exit 1
fi

build_packages=(libvirt-dev gcc libc6-dev pkg-config make git)
packages=(
	# runtime and test environment
	libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils
	openssh-server nbdkit libnbd-bin ovmf ca-certificates dbus procps iproute2
	# sudo: the tests of a KVM source user with docs/sudoers.ferry
	sudo
	# a kernel for test guests that boot (a guest agent answering libvirt)
	linux-image-amd64
	# guest conversion (PREPARING): virt-v2v-in-place, guestfish and their
	# libguestfs appliance; debootstrap builds the Debian test guest
	# (scripts/debian-guest.sh)
	virt-v2v libguestfs-tools guestfs-tools debootstrap fdisk
	# the Python client test (coordinator/internal/server/python_client_test.go):
	# protoc with the gRPC Python plugin, and Python's grpc and protobuf
	protobuf-compiler protobuf-compiler-grpc python3-grpcio python3-protobuf
	# promtool, which lints the /metrics scrapes of the metrics tests
	# (agent/e2e/metrics_test.go, pkg/promserve, the metrics packages)
	prometheus
	# building: cgo against libvirt, make itself
	"${build_packages[@]}"
)

if [[ $mode == build ]]; then
	# A build needs only cgo's libvirt; a machine that has it (Debian or not)
	# is left alone.
	if command -v gcc >/dev/null && command -v pkg-config >/dev/null && pkg-config --exists libvirt; then
		exit 0
	fi
	packages=("${build_packages[@]}")
fi

installed() {
	[[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

if ! command -v apt-get >/dev/null; then
	echo "deps: no apt-get here (this script knows Debian 12); install the equivalents of: ${packages[*]}" >&2
	exit 1
fi

missing=()
for p in "${packages[@]}"; do
	installed "$p" || missing+=("$p")
done

if ((${#missing[@]} > 0)); then
	sudo=()
	if [[ $(id -u) -ne 0 ]]; then
		if ! command -v sudo >/dev/null || ! sudo -n true 2>/dev/null; then
			run="'scripts/deps.sh${1:+ $1}' as root"
			if command -v sudo >/dev/null; then run="'sudo scripts/deps.sh${1:+ $1}'"; fi
			echo "deps: missing Debian packages ${missing[*]}; run $run first" >&2
			exit 1
		fi
		sudo=(sudo -n)
	fi
	echo "deps: installing ${missing[*]}"
	"${sudo[@]}" apt-get update -qq
	"${sudo[@]}" apt-get install -y -qq \
		-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
		"${missing[@]}"
else
	echo "deps: Debian packages present"
fi

if [[ $mode != all ]]; then
	exit 0
fi

go mod download
# Build the pinned tools once so `go tool buf` etc. start from the build cache.
go build tool
echo "deps: Go modules and tools ready ($(go version))"
