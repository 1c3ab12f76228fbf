package prepare

import (
	"testing"

	"google.golang.org/protobuf/proto"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// An excerpt of what virt-v2v-in-place 2.2 printed with -v converting the
// Debian test guest (scripts/debian-guest.sh).
const v2vLog = `[   0.0] Setting up the source: -i disk o.qcow2
[  79.8] Inspecting the source
inspect_os: fses:
fs: /dev/sda1 (ext4) role: root
    type: linux
    distro: debian
i_root = /dev/sda1
i_type = linux
i_distro = debian
i_osinfo = debian12
i_arch = x86_64
i_major_version = 12
i_minor_version = 15
i_package_format = deb
i_product_name = 12.15
i_product_variant = unknown
i_firmware = BIOS
[ 101.2] Converting 12.15 to run on KVM
commandrvf: dpkg -L linux-image-amd64
commandrvf: dpkg --purge open-vm-tools
virt-v2v-in-place: The QEMU Guest Agent will be installed for this guest at first boot.
commandrvf: /usr/sbin/update-initramfs -v -c -k 6.1.0-50-amd64
commandrvf: /usr/sbin/update-initramfs -v -c -k 6.1.0-50-amd64
`

func TestParseInspection(t *testing.T) {
	got := parseInspection([]byte(v2vLog))
	want := &ferryv1.GuestInspection{OsType: "linux", Distribution: "debian", Version: "12.15", ProductName: "12.15", Firmware: "bios",
		Changes: []string{"removed package open-vm-tools", "QEMU guest agent installed at first boot", "initramfs rebuilt with virtio drivers (update-initramfs)"}}
	if !proto.Equal(got, want) {
		t.Errorf("parseInspection = %v, want %v", got, want)
	}
}

func TestV2VError(t *testing.T) {
	log := "[   0.0] Setting up the source: -i disk a.qcow2\nvirt-v2v-in-place: error: inspection could not detect the source guest (or \nphysical machine).\n\nAssuming that you are running virt-v2v ...\n"
	if got, want := v2vError([]byte(log)), "inspection could not detect the source guest (or physical machine)."; got != want {
		t.Errorf("v2vError = %q, want %q", got, want)
	}
	if got := v2vError([]byte("nothing here\n")); got != "" {
		t.Errorf("v2vError without an error = %q", got)
	}
}
