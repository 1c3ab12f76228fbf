package export

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
	"github.com/ferry-v2v/ferry/agent/internal/runner"
	"github.com/ferry-v2v/ferry/pkg/bundle"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/ratelimit"
)

// cachedJob makes a job directory as CONVERTING leaves it: a raw cache
// image of vda (1 MiB, data at two places) and the source VM.
func cachedJob(t *testing.T, e *ferryv1.ExportSpec, secrets map[string]string) (*runner.Job, *keySigner) {
	t.Helper()
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img is missing: apt-get install qemu-utils")
	}
	dir := t.TempDir()
	img := make([]byte, 1<<20)
	copy(img[8192:], bytes.Repeat([]byte("bundle"), 500))
	copy(img[700<<10:], bytes.Repeat([]byte{0x5a}, 4096))
	if err := os.WriteFile(filepath.Join(dir, "vda."+cache.FormatRaw), img, 0o600); err != nil {
		t.Fatal(err)
	}
	vm := &ferryv1.SourceVm{Id: "web", Name: "web", Cpus: 2, MemoryBytes: 1 << 30, MachineType: "pc-q35-7.2",
		Disks: []*ferryv1.SourceDisk{{Target: "vda", Bus: "virtio", CapacityBytes: 1 << 20}},
		Nics:  []*ferryv1.SourceNic{{Mac: "52:54:00:00:00:01", Model: "virtio", Network: "default"}}}
	if err := cache.SaveSourceVM(dir, vm, nil); err != nil {
		t.Fatal(err)
	}
	pub, key, _ := ed25519.GenerateKey(nil)
	a := &agentv1.Assignment{Epoch: 3, Secrets: secrets,
		Source: &ferryv1.Source{Name: "sources/kvm", Type: ferryv1.Platform_PLATFORM_KVM, Kvm: &ferryv1.KvmConnection{Address: "192.0.2.1"}},
		Job: &ferryv1.MigrationJob{Name: "migrationJobs/j1", SourceVm: "web", Export: e,
			Target: &ferryv1.TargetVm{VmName: "web", Disks: []*ferryv1.TargetDisk{{SourceDisk: "vda", SizeBytes: 1 << 20}}}}}
	return &runner.Job{Assignment: a, CacheDir: dir, Log: slog.New(slog.DiscardHandler)}, &keySigner{pub: pub, key: key}
}

// keySigner signs as the leader would, with a key of the test's, and
// records what it was asked.
type keySigner struct {
	pub    ed25519.PublicKey
	key    ed25519.PrivateKey
	refuse string

	job      string
	epoch    int64
	manifest []byte
}

func (k *keySigner) SignBundle(_ context.Context, job string, epoch int64, manifest []byte) ([]byte, []byte, error) {
	k.job, k.epoch, k.manifest = job, epoch, manifest
	if k.refuse != "" {
		return nil, nil, errors.New(k.refuse)
	}
	return bundle.Sign(manifest, k.key), k.pub, nil
}

// TestSMBDestination exports to an SMB share through the exact commands
// the agent runs. This machine's kernel has no CIFS (no cifs module for
// it, nothing in /proc/filesystems), so mount.cifs cannot run here: the
// recorded mount leaves its mount point a plain directory, which the
// bundle is written into. The password goes in a credentials file of
// mode 0600 that exists only while mount runs, never on the command
// line; the share is unmounted and its mount point removed afterwards.
func TestSMBDestination(t *testing.T) {
	e := &ferryv1.ExportSpec{Format: ferryv1.ExportFormat_EXPORT_FORMAT_QCOW2, BundleName: "web",
		Destination: &ferryv1.ExportDestination{Type: ferryv1.ExportDestinationType_EXPORT_DESTINATION_TYPE_SMB,
			Share: "//nas.example/exports", Path: "2026/dec", User: "ferry", Credential: "credentials/nas", Domain: "LAB"}}
	job, sg := cachedJob(t, e, map[string]string{"credentials/nas": "s3cret pass"})
	mounts := t.TempDir()
	var cmds [][]string
	var credMode os.FileMode
	var credContent string
	d := New(Options{Signer: sg, MountDir: mounts, Run: func(_ context.Context, argv []string) error {
		cmds = append(cmds, argv)
		if argv[0] == "mount" {
			opts := argv[4]
			file := strings.TrimPrefix(strings.Split(opts, ",")[0], "credentials=")
			st, err := os.Stat(file)
			if err != nil {
				t.Errorf("credentials file %s while mounting: %v", file, err)
				return nil
			}
			credMode = st.Mode().Perm()
			b, _ := os.ReadFile(file)
			credContent = string(b)
		}
		return nil
	}})
	if err := d.Export(context.Background(), job); err != nil {
		t.Fatal(err)
	}
	point := filepath.Join(mounts, "j1-3")
	want := [][]string{
		{"mount", "-t", "cifs", "-o", "credentials=" + point + ".cred,uid=0,gid=0,file_mode=0640,dir_mode=0750,nounix,noserverino", "//nas.example/exports", point},
		{"umount", point},
	}
	if !reflect.DeepEqual(cmds, want) {
		t.Errorf("commands:\n%q\nwant\n%q", cmds, want)
	}
	for _, c := range cmds {
		if strings.Contains(strings.Join(c, " "), "s3cret") {
			t.Errorf("the password is on a command line: %q", c)
		}
	}
	if credMode != 0o600 || credContent != "username=ferry\npassword=s3cret pass\ndomain=LAB\n" {
		t.Errorf("credentials file mode %v, content %q", credMode, credContent)
	}
	if _, err := os.Stat(point + ".cred"); !os.IsNotExist(err) {
		t.Errorf("credentials file left after the mount: %v", err)
	}
	// The recorded umount did not unmount, so the point is still there
	// (a real one is removed after umount): the bundle is in it.
	m, _, err := bundle.Verify(context.Background(), filepath.Join(point, "2026/dec/web"), bundle.Options{PublicKey: sg.pub})
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Disks) != 1 || m.Disks[0].File != "vda.qcow2" || m.Source.Address != "192.0.2.1" {
		t.Errorf("manifest %+v", m)
	}
}

// TestNFSCommand is the exact mount of an NFS destination.
func TestNFSCommand(t *testing.T) {
	argv, cred, err := New(Options{}).MountCommand(&ferryv1.ExportDestination{Type: ferryv1.ExportDestinationType_EXPORT_DESTINATION_TYPE_NFS,
		Share: "filer:/vol/exports"}, "/m/j1-3", nil)
	if err != nil || cred != "" || !reflect.DeepEqual(argv, []string{"mount", "-t", "nfs", "-o", "hard,timeo=600", "filer:/vol/exports", "/m/j1-3"}) {
		t.Errorf("MountCommand = %q, %q, %v", argv, cred, err)
	}
}

// TestDirectoryExportRefusesAnExistingBundle: a bundle already at the
// destination fails the job and is left as it was; Discard removes the
// partial bundle of a failed attempt only.
func TestDirectoryExportRefusesAnExistingBundle(t *testing.T) {
	dest := t.TempDir()
	e := &ferryv1.ExportSpec{BundleName: "web", Format: ferryv1.ExportFormat_EXPORT_FORMAT_RAW,
		Destination: &ferryv1.ExportDestination{Type: ferryv1.ExportDestinationType_EXPORT_DESTINATION_TYPE_DIRECTORY, Path: dest}}
	job, sg := cachedJob(t, e, nil)
	d := New(Options{Signer: sg})
	if err := d.Export(context.Background(), job); err != nil {
		t.Fatal(err)
	}
	err := d.Export(context.Background(), job)
	if err == nil || !strings.Contains(err.Error(), "bundle "+filepath.Join(dest, "web")+" exists already") {
		t.Errorf("a second export: %v", err)
	}
	partial := filepath.Join(dest, ".web.ferry-partial-3")
	if err := os.Mkdir(partial, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := d.Discard(context.Background(), job); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dest)
	if len(entries) != 1 || entries[0].Name() != "web" {
		t.Errorf("destination holds %v, want the bundle alone", entries)
	}
}

// TestFormats writes each format into a directory and verifies the
// bundle whole (the content read back through qemu-nbd): raw, vhdx,
// compressed qcow2, and vmdk streamOptimized, as qemu-img info says.
func TestFormats(t *testing.T) {
	for _, tc := range []struct {
		format   ferryv1.ExportFormat
		compress bool
		file     string
		info     string
	}{
		{ferryv1.ExportFormat_EXPORT_FORMAT_RAW, false, "vda.raw", "file format: raw"},
		{ferryv1.ExportFormat_EXPORT_FORMAT_VHDX, false, "vda.vhdx", "file format: vhdx"},
		{ferryv1.ExportFormat_EXPORT_FORMAT_QCOW2, true, "vda.qcow2", "file format: qcow2"},
		{ferryv1.ExportFormat_EXPORT_FORMAT_VMDK, false, "vda.vmdk", "create type: streamOptimized"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			dest := t.TempDir()
			job, sg := cachedJob(t, &ferryv1.ExportSpec{BundleName: "web", Format: tc.format, Compress: tc.compress,
				Destination: &ferryv1.ExportDestination{Type: ferryv1.ExportDestinationType_EXPORT_DESTINATION_TYPE_DIRECTORY, Path: dest}}, nil)
			if err := New(Options{Signer: sg}).Export(context.Background(), job); err != nil {
				t.Fatal(err)
			}
			m, _, err := bundle.Verify(context.Background(), filepath.Join(dest, "web"), bundle.Options{PublicKey: sg.pub})
			if err != nil {
				t.Fatal(err)
			}
			if m.Disks[0].File != tc.file || m.Disks[0].SizeBytes != 1<<20 {
				t.Errorf("disk %+v", m.Disks[0])
			}
			out, err := exec.Command("qemu-img", "info", filepath.Join(dest, "web", tc.file)).CombinedOutput()
			if err != nil || !strings.Contains(string(out), tc.info) {
				t.Errorf("qemu-img info: %v: %s; want %q", err, out, tc.info)
			}
		})
	}
}

// TestRateLimit: the export's own limit, else the server's upstream
// limit in bytes, goes to qemu-img convert -r.
func TestRateLimit(t *testing.T) {
	job, _ := cachedJob(t, &ferryv1.ExportSpec{RateLimitBytesPerSecond: 4096}, nil)
	job.Upstream = ratelimit.New(8 << 20)
	if r := rateLimit(job); r != 4096 {
		t.Errorf("rate with the export's own limit = %d, want 4096", r)
	}
	job.Assignment.Job.Export.RateLimitBytesPerSecond = 0
	if r := rateLimit(job); r != 1<<20 {
		t.Errorf("rate with the server's 8 Mbit/s = %d, want %d bytes/s", r, 1<<20)
	}
	argv := ConvertArgs("driver=raw", "/out/vda.vmdk", []string{"-O", "vmdk", "-o", "subformat=streamOptimized"}, 1<<20)
	want := []string{"qemu-img", "convert", "-p", "--image-opts", "driver=raw", "-O", "vmdk", "-o", "subformat=streamOptimized", "-r", "1048576", "/out/vda.vmdk"}
	if !reflect.DeepEqual(argv, want) {
		t.Errorf("ConvertArgs = %q, want %q", argv, want)
	}
}

// TestSigning: the agent holds no key. Once the files are written it asks
// for the manifest to be signed, with the job, its epoch and the manifest's
// exact bytes as they stand in ferry-bundle.json; a refusal fails the
// export with the leader's reason and leaves nothing under the bundle's
// name, nor without the signer.
func TestSigning(t *testing.T) {
	dest := t.TempDir()
	e := &ferryv1.ExportSpec{BundleName: "web", Format: ferryv1.ExportFormat_EXPORT_FORMAT_RAW,
		Destination: &ferryv1.ExportDestination{Type: ferryv1.ExportDestinationType_EXPORT_DESTINATION_TYPE_DIRECTORY, Path: dest}}
	job, sg := cachedJob(t, e, nil)
	if err := New(Options{}).Export(context.Background(), job); err == nil || !strings.Contains(err.Error(), "no bundle signer") {
		t.Fatalf("export without a signer: %v", err)
	}
	sg.refuse = "assignment superseded: job runs under epoch 4 on hosts/h2"
	err := New(Options{Signer: sg}).Export(context.Background(), job)
	if err == nil || err.Error() != "sign the bundle: "+sg.refuse {
		t.Fatalf("export with a refused signature: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dest, "web")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused bundle is at the destination: %v", err)
	}
	sg.refuse = ""
	if err := New(Options{Signer: sg}).Export(context.Background(), job); err != nil {
		t.Fatal(err)
	}
	if sg.job != "migrationJobs/j1" || sg.epoch != 3 {
		t.Errorf("asked to sign for %s epoch %d", sg.job, sg.epoch)
	}
	file, err := os.ReadFile(filepath.Join(dest, "web", bundle.ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	var f struct{ Manifest json.RawMessage }
	if err := json.Unmarshal(file, &f); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(f.Manifest, sg.manifest) {
		t.Errorf("signed %q, the file holds %q", sg.manifest, f.Manifest)
	}
	m, err := bundle.ParseManifest(sg.manifest)
	if err != nil || m.Job != "migrationJobs/j1" || m.Source.Name != "sources/kvm" || m.Source.VM != "web" {
		t.Errorf("signed manifest %+v, %v", m, err)
	}
}
