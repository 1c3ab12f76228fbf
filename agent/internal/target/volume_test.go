package target

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

func storage(typ ferryv1.PrimaryStorageType, path, pool, vg string) *ferryv1.PrimaryStorage {
	return &ferryv1.PrimaryStorage{Name: "primaryStorages/ps1", Type: typ, Path: path, CephPool: pool, VolumeGroup: vg}
}

func TestPlanAndCommands(t *testing.T) {
	const size = 10 << 30
	tests := []struct {
		name          string
		storage       *ferryv1.PrimaryStorage
		wantPath      string
		wantFormat    string
		wantZeroed    bool
		create, del   [][]string
		serveTailArgs []string
	}{
		{
			name:       "local",
			storage:    storage(ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_LOCAL, "/var/lib/ferry/ps", "", ""),
			wantPath:   "/var/lib/ferry/ps/j1/vda.qcow2",
			wantFormat: "qcow2", wantZeroed: true,
			create: [][]string{
				{"mkdir", "-p", "/var/lib/ferry/ps/j1"},
				{"qemu-img", "create", "-q", "-f", "qcow2", "-o", "preallocation=metadata,cluster_size=2M", "/var/lib/ferry/ps/j1/vda.qcow2", "10737418240"},
			},
			del: [][]string{
				{"rm", "-f", "/var/lib/ferry/ps/j1/vda.qcow2"},
				{"rmdir", "--ignore-fail-on-non-empty", "/var/lib/ferry/ps/j1"},
			},
			serveTailArgs: []string{"--format=qcow2", "--cache=writeback", "--discard=unmap", "/var/lib/ferry/ps/j1/vda.qcow2"},
		},
		{
			name:       "nfs",
			storage:    storage(ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_NFS, "/mnt/nfs", "", ""),
			wantPath:   "/mnt/nfs/j1/vda.qcow2",
			wantFormat: "qcow2", wantZeroed: true,
			create: [][]string{
				{"mkdir", "-p", "/mnt/nfs/j1"},
				{"qemu-img", "create", "-q", "-f", "qcow2", "-o", "preallocation=metadata,cluster_size=2M", "/mnt/nfs/j1/vda.qcow2", "10737418240"},
			},
			del: [][]string{
				{"rm", "-f", "/mnt/nfs/j1/vda.qcow2"},
				{"rmdir", "--ignore-fail-on-non-empty", "/mnt/nfs/j1"},
			},
			serveTailArgs: []string{"--format=qcow2", "--cache=writeback", "--discard=unmap", "/mnt/nfs/j1/vda.qcow2"},
		},
		{
			name:       "ceph",
			storage:    storage(ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_CEPH, "", "vms", ""),
			wantPath:   "rbd:vms/ferry-j1-vda",
			wantFormat: "raw", wantZeroed: true,
			create:        [][]string{{"qemu-img", "create", "-q", "-f", "raw", "rbd:vms/ferry-j1-vda", "10737418240"}},
			del:           [][]string{{"rbd", "rm", "vms/ferry-j1-vda"}},
			serveTailArgs: []string{"--format=raw", "--cache=writeback", "--discard=unmap", "rbd:vms/ferry-j1-vda"},
		},
		{
			name:       "sharedblock",
			storage:    storage(ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_SHAREDBLOCK, "", "", "vg0"),
			wantPath:   "/dev/vg0/ferry-j1-vda",
			wantFormat: "raw", wantZeroed: false,
			create:        [][]string{{"lvcreate", "-y", "-L", "10737418240b", "-n", "ferry-j1-vda", "vg0"}},
			del:           [][]string{{"lvremove", "-y", "vg0/ferry-j1-vda"}},
			serveTailArgs: []string{"--format=raw", "--cache=none", "--aio=native", "--discard=unmap", "/dev/vg0/ferry-j1-vda"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := NameVolume(tt.storage, "migrationJobs/j1", "vda", size)
			if err != nil {
				t.Fatal(err)
			}
			if v.Path != tt.wantPath || v.Format != tt.wantFormat || v.ZeroInitialized() != tt.wantZeroed {
				t.Errorf("volume = %+v zeroed=%v", v, v.ZeroInitialized())
			}
			r := &fakeCommander{}
			if err := v.Create(context.Background(), r); err != nil {
				t.Fatal(err)
			}
			if err := v.Delete(context.Background(), r); err != nil {
				t.Fatal(err)
			}
			if want := append(append([][]string(nil), tt.create...), tt.del...); !reflect.DeepEqual(r.commands(), want) {
				t.Errorf("commands:\n got %q\nwant %q", r.commands(), want)
			}
			serve := v.ServeArgs("/run/s.sock")
			head := []string{"qemu-nbd", "--persistent", "--shared=8", "--socket=/run/s.sock"}
			if !reflect.DeepEqual(serve, append(head, tt.serveTailArgs...)) {
				t.Errorf("serve args = %q", serve)
			}
		})
	}
}

func TestPlanRefuses(t *testing.T) {
	tests := []struct {
		name      string
		storage   *ferryv1.PrimaryStorage
		job, disk string
		size      int64
	}{
		{"unspecified type", storage(ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_UNSPECIFIED, "/x", "", ""), "j", "vda", 1},
		{"relative path", storage(ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_LOCAL, "x", "", ""), "j", "vda", 1},
		{"no pool", storage(ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_CEPH, "", "", ""), "j", "vda", 1},
		{"no volume group", storage(ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_SHAREDBLOCK, "", "", ""), "j", "vda", 1},
		{"disk with a slash", storage(ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_LOCAL, "/x", "", ""), "j", "../etc", 1},
		{"job with spaces", storage(ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_LOCAL, "/x", "", ""), "a b", "vda", 1},
		{"zero size", storage(ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_LOCAL, "/x", "", ""), "j", "vda", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := NameVolume(tt.storage, tt.job, tt.disk, tt.size); !errors.Is(err, ErrBadStorage) {
				t.Errorf("NameVolume = %v, want ErrBadStorage", err)
			}
		})
	}
}

// A leftover LV or RBD image of a crashed attempt is removed and created
// again; deleting what is already gone succeeds.
func TestCreateReplacesLeftoverAndDeleteIsIdempotent(t *testing.T) {
	lv, _ := NameVolume(storage(ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_SHAREDBLOCK, "", "", "vg0"), "j1", "vdb", 1<<20)
	r := &fakeCommander{fail: map[string]string{"lvcreate": `  Logical Volume "ferry-j1-vdb" already exists in volume group "vg0"`}}
	if err := lv.Create(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	want := [][]string{
		{"lvcreate", "-y", "-L", "1048576b", "-n", "ferry-j1-vdb", "vg0"},
		{"lvremove", "-y", "vg0/ferry-j1-vdb"},
		{"lvcreate", "-y", "-L", "1048576b", "-n", "ferry-j1-vdb", "vg0"},
	}
	if !reflect.DeepEqual(r.commands(), want) {
		t.Errorf("commands = %q", r.commands())
	}

	rbd, _ := NameVolume(storage(ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_CEPH, "", "vms", ""), "j1", "vdb", 1<<20)
	r = &fakeCommander{fail: map[string]string{"rbd": "rbd: delete error: (2) No such file or directory"}}
	if err := rbd.Delete(context.Background(), r); err != nil {
		t.Errorf("delete of a missing image: %v", err)
	}
	r = &fakeCommander{fail: map[string]string{"lvremove": `  Failed to find logical volume "vg0/ferry-j1-vdb"`}}
	if err := lv.Delete(context.Background(), r); err != nil {
		t.Errorf("delete of a missing LV: %v", err)
	}
	r = &fakeCommander{fail: map[string]string{"lvremove": `  Logical volume vg0/ferry-j1-vdb in use.`}}
	if err := lv.Delete(context.Background(), r); err == nil {
		t.Error("delete of an LV in use succeeded")
	}
}

// Real commands for a directory: create, delete, delete again.
func TestLocalVolumeForReal(t *testing.T) {
	requireTools(t, "qemu-img")
	dir := t.TempDir()
	v, err := NameVolume(storage(ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_LOCAL, dir, "", ""), "j1", "vda", 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	r := ExecCommander{Log: testkit.Logger(t)}
	ctx := context.Background()
	for range 2 { // the second create overwrites
		if err := v.Create(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if out := run(t, "qemu-img", "info", v.Path); !contains(out, "file format: qcow2") || !contains(out, "virtual size: 64 MiB") {
		t.Errorf("qemu-img info:\n%s", out)
	}
	for range 2 {
		if err := v.Delete(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "j1")); !os.IsNotExist(err) {
		t.Errorf("job directory left behind: %v", err)
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
