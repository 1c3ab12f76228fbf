package kvmver

import (
	"errors"
	"strings"
	"testing"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

func TestParse(t *testing.T) {
	for s, want := range map[string]Version{"9.0.0": {9, 0, 0}, "7.2": {7, 2, 0}, "7.2.11 (Debian 1:7.2+dfsg)": {7, 2, 11}} {
		if got, ok := Parse(s); !ok || got != want {
			t.Errorf("Parse(%q) = %v, %v; want %v", s, got, ok, want)
		}
	}
	for _, s := range []string{"", "9", "9.x.0", "1.2.3.4"} {
		if _, ok := Parse(s); ok {
			t.Errorf("Parse(%q) succeeded", s)
		}
	}
}

func TestCheck(t *testing.T) {
	tests := []struct {
		lib, qemu Version
		ceph      string
		want      string // the error, "" for none
	}{
		{Version{9, 0, 0}, Version{7, 2, 0}, "x", ""},
		{Version{1, 2, 9}, Version{1, 1, 0}, "", ""},
		{Version{1, 2, 8}, Version{2, 0, 0}, "", "source version too old: libvirt 1.2.8 found, 1.2.9 or newer needed"},
		{Version{1, 2, 15}, Version{2, 0, 0}, "source disk vda is the RBD image pool/img",
			"source version too old: libvirt 1.2.15 found, 1.2.16 or newer needed with Ceph storage (source disk vda is the RBD image pool/img)"},
		{Version{1, 2, 15}, Version{2, 0, 0}, "", ""},
		{Version{2, 0, 0}, Version{1, 0, 9}, "", "source version too old: QEMU 1.0.9 found, 1.1.0 or newer needed"},
	}
	for _, tt := range tests {
		err := Check(tt.lib, tt.qemu, tt.ceph)
		if tt.want == "" && err != nil || tt.want != "" && (!errors.Is(err, ErrTooOld) || err.Error() != tt.want) {
			t.Errorf("Check(%s, %s, %q) = %v; want %q", tt.lib, tt.qemu, tt.ceph, err, tt.want)
		}
	}
	if err := CheckBackup(Version{5, 10, 0}, Version{7, 2, 0}); !errors.Is(err, ErrTooOld) || !strings.Contains(err.Error(), "found libvirt 5.10.0") {
		t.Errorf("CheckBackup(5.10.0) = %v", err)
	}
}

func TestCephReason(t *testing.T) {
	disks := []*ferryv1.SourceDisk{{Target: "vda", Path: "/var/lib/libvirt/images/a.qcow2"}, {Target: "vdb", Path: "rbd:pool/data"}}
	all := func(string) bool { return true }
	onlyVda := func(d string) bool { return d == "vda" }
	for _, tt := range []struct {
		target bool
		copies func(string) bool
		want   string
	}{
		{false, all, "source disk vdb is the RBD image pool/data"},
		{false, onlyVda, ""},
		{true, onlyVda, "the target primary storage is Ceph"},
	} {
		if got := CephReason(tt.target, disks, tt.copies); got != tt.want {
			t.Errorf("CephReason(%v) = %q, want %q", tt.target, got, tt.want)
		}
	}
}
