package bundle

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// image makes a qcow2 image of 8 MiB with data at two places and returns
// it and the SHA-256 of its raw content, by qemu-img convert -O raw.
func image(t *testing.T, dir string) (string, string) {
	t.Helper()
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img is missing: apt-get install qemu-utils")
	}
	raw := filepath.Join(dir, "src.raw")
	b := make([]byte, 8<<20)
	copy(b[4096:], bytes.Repeat([]byte("ferry"), 1000))
	copy(b[5<<20:], bytes.Repeat([]byte{0xa5, 0x5a}, 40000))
	if err := os.WriteFile(raw, b, 0o644); err != nil {
		t.Fatal(err)
	}
	q := filepath.Join(dir, "vda.qcow2")
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, q)
	back := filepath.Join(dir, "back.raw")
	run(t, "qemu-img", "convert", "-O", "raw", q, back)
	rb, err := os.ReadFile(back)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(rb)
	os.Remove(raw)
	os.Remove(back)
	return q, hex.EncodeToString(sum[:])
}

func run(t *testing.T, argv ...string) {
	t.Helper()
	if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
	}
}

func TestSignVerifyAndTamper(t *testing.T) {
	dir := t.TempDir()
	q, want := image(t, dir)
	ctx := context.Background()
	sum, size, err := HashContent(ctx, q, "qcow2")
	if err != nil {
		t.Fatal(err)
	}
	if sum != want || size != 8<<20 {
		t.Fatalf("HashContent = %s, %d; want %s (sha256 of qemu-img convert -O raw), %d", sum, size, want, 8<<20)
	}
	fsum, fbytes, err := HashFile(q)
	if err != nil {
		t.Fatal(err)
	}
	pub, key, _ := ed25519.GenerateKey(nil)
	m := &Manifest{FerryVersion: "test", Job: "migrationJobs/x", Source: Source{Name: "sources/s", Type: "PLATFORM_KVM", VM: "web"},
		VM: []byte(`{"name":"web"}`), Target: []byte(`{"vmName":"web","cpus":2}`),
		Disks: []Disk{{File: "vda.qcow2", SourceDisk: "vda", Format: "qcow2", Boot: true, SizeBytes: size, SHA256: sum, FileSHA256: fsum, FileBytes: fbytes}}}
	b, err := Encode(m, key)
	if err != nil {
		t.Fatal(err)
	}
	mf := filepath.Join(dir, ManifestFile)
	if err := os.WriteFile(mf, b, 0o644); err != nil {
		t.Fatal(err)
	}
	got, sig, err := Verify(ctx, dir, Options{PublicKey: pub})
	if err != nil {
		t.Fatalf("Verify of a whole bundle: %v", err)
	}
	if got.Disks[0].SHA256 != want || sig.KeyID != KeyID(pub) {
		t.Errorf("Verify answered disk sum %s key %s", got.Disks[0].SHA256, sig.KeyID)
	}
	other, _, _ := ed25519.GenerateKey(nil)
	if _, _, err := Verify(ctx, dir, Options{PublicKey: other}); !isFile(err, mf, "not by the expected key") {
		t.Errorf("Verify with another key: %v", err)
	}

	// One field of the manifest: the signature no longer matches.
	tampered := bytes.Replace(b, []byte(`"cpus": 2`), []byte(`"cpus": 8`), 1)
	if bytes.Equal(tampered, b) {
		t.Fatal("the manifest has no cpus to tamper with")
	}
	must(t, os.WriteFile(mf, tampered, 0o644))
	if _, _, err := Verify(ctx, dir, Options{}); !isFile(err, mf, "does not match the manifest") {
		t.Errorf("Verify of a tampered manifest: %v", err)
	}
	must(t, os.WriteFile(mf, b, 0o644))

	// One byte of the disk, in its data.
	img, err := os.ReadFile(q)
	must(t, err)
	i := bytes.Index(img, []byte("ferryferry"))
	if i < 0 {
		t.Fatal("no data found in the qcow2 file")
	}
	img[i] ^= 0xff
	must(t, os.WriteFile(q, img, 0o644))
	if _, _, err := Verify(ctx, dir, Options{}); !isFile(err, q, "SHA-256 of the file") {
		t.Errorf("Verify of a tampered disk: %v", err)
	}
}

func isFile(err error, file, reason string) bool {
	var be *Error
	return errors.As(err, &be) && be.File == file && strings.Contains(be.Reason, reason)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestSignApart: the manifest's bytes signed apart from the process that
// wrote them (the leader signs what the agent sends) make the same file
// Encode would; a signature of other bytes or by another key is refused
// by Assemble, and ParseManifest refuses what is not a manifest.
func TestSignApart(t *testing.T) {
	pub, key, _ := ed25519.GenerateKey(nil)
	m := &Manifest{FerryVersion: "t", CreateTime: "2026-12-05T00:00:00Z", Job: "migrationJobs/e1",
		Source: Source{Name: "sources/kvm", Type: "PLATFORM_KVM", VM: "web"}, VM: []byte(`{"name":"web"}`), Target: []byte(`{}`)}
	whole, err := Encode(m, key)
	if err != nil {
		t.Fatal(err)
	}
	body, err := Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	apart, err := Assemble(body, pub, Sign(body, key))
	if err != nil || !bytes.Equal(apart, whole) {
		t.Fatalf("Assemble = %q, %v; want Encode's %q", apart, err, whole)
	}
	got, err := ParseManifest(body)
	if err != nil || got.Job != m.Job || got.Source != m.Source {
		t.Fatalf("ParseManifest = %+v, %v", got, err)
	}
	other, _, _ := ed25519.GenerateKey(nil)
	for name, tc := range map[string]struct {
		pub ed25519.PublicKey
		sig []byte
	}{
		"other bytes": {pub, Sign(append([]byte(" "), body...), key)},
		"another key": {other, Sign(body, key)},
	} {
		if _, err := Assemble(body, tc.pub, tc.sig); err == nil || !strings.Contains(err.Error(), "does not match the manifest") {
			t.Errorf("%s: Assemble = %v", name, err)
		}
	}
	for _, bad := range []string{`[]`, `{"format":"ferry-bundle/1"} {}`, `{"format":"ferry-bundle/1","signature":{}}`, `{"format":"x"}`} {
		if _, err := ParseManifest([]byte(bad)); err == nil {
			t.Errorf("ParseManifest(%s) accepted it", bad)
		}
	}
}
