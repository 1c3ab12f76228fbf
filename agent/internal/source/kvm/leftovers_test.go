package kvm

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-v2v/ferry/pkg/seal"
)

// TestLeftoverRecords: a backup's record keeps its secrets sealed in a
// 0600 file; the janitor leaves a record in use alone, keeps one whose
// source cannot be reached, and ending the backup drops it.
func TestLeftoverRecords(t *testing.T) {
	dir := t.TempDir()
	d := NewDriver(nil, nil, Options{StateDir: dir})
	const key, password = "ssh-secret-password", "sasl-secret"
	cfg := Config{Address: "127.0.0.1", Port: 1, User: "root", Password: seal.Secret(key),
		SASLUser: "virt", SASLPassword: seal.Secret(password)}
	b := &Backup{vm: "vm1", uuid: "0d7f0e3c-3a6e-4a8e-9a55-1f0c1e2d3b4a",
		socket:  "/var/lib/libvirt/qemu/" + BackupPrefix + "0d7f0e3c-3a6e-4a8e-9a55-1f0c1e2d3b4a-01020304.sock",
		scratch: []string{"/var/lib/libvirt/images/" + BackupPrefix + "0d7f0e3c-3a6e-4a8e-9a55-1f0c1e2d3b4a-01020304-vda.qcow2"}}
	id, err := d.remember(cfg, "", "migrationJobs/j1", b)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, id+".json")
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), key) || strings.Contains(string(data), password) {
		t.Fatalf("record holds a secret in clear: %s", data)
	}
	var rec leftover
	if err := json.Unmarshal(data, &rec); err != nil {
		t.Fatal(err)
	}
	if rec.Socket != b.socket || rec.UUID != b.uuid || rec.Job != "migrationJobs/j1" || len(rec.Sealed) != 2 {
		t.Fatalf("record = %+v", rec)
	}
	s, err := d.sealer()
	if err != nil {
		t.Fatal(err)
	}
	if plain, err := s.Open(rec.Sealed["password"], []byte(id)); err != nil || string(plain) != key {
		t.Fatalf("sealed key opens to %q, %v", plain, err)
	}
	for _, f := range []string{file, filepath.Join(dir, leftoverKeyFile)} {
		if fi, err := os.Stat(f); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, %v; want 0600", f, fi.Mode().Perm(), err)
		}
	}

	if n, err := d.CleanupLeftovers(context.Background()); n != 0 || err != nil {
		t.Fatalf("a record in use: CleanupLeftovers = %d, %v; want it left alone", n, err)
	}
	d.release(id, false) // the job ended without ending its backup
	n, err := d.CleanupLeftovers(context.Background())
	if n != 0 || err == nil || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("unreachable source: CleanupLeftovers = %d, %v; want its connection error", n, err)
	}
	if _, err := os.Stat(file); err != nil {
		t.Fatalf("the record of an unreachable source was dropped: %v", err)
	}
	d.release(id, true)
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Fatalf("record still there after its backup ended: %v", err)
	}
}
