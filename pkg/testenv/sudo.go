package testenv

import (
	"context"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
)

// SudoersPlaceholder stands for the user's name in a sudoers snippet
// (docs/sudoers.ferry).
const SudoersPlaceholder = "FERRYUSER"

// SudoUser creates a local user of its own, named prefix and random hex
// (not in group libvirt, home directory 0755 so QEMU may traverse it),
// with password. With a snippet (a sudoers file naming
// SudoersPlaceholder) it installs that file, the user's name put in and
// checked with `visudo -cf`, as /etc/sudoers.d/<name>. The user, its home
// directory and the sudoers file are removed when the test ends.
func SudoUser(t testing.TB, prefix, password, snippet string) string {
	t.Helper()
	RequireRoot(t)
	LookPath(t, "sudo")
	name := prefix + randomHex(3)
	if _, err := user.Lookup(name); err == nil {
		t.Fatalf("user %s exists already", name)
	}
	if _, err := run(context.Background(), nil, LookPath(t, "useradd"), "-m", "-s", "/bin/sh", name); err != nil {
		t.Fatalf("useradd %s: %v", name, err)
	}
	t.Cleanup(func() {
		if _, err := run(context.Background(), nil, LookPath(t, "userdel"), "-r", "-f", name); err != nil {
			t.Errorf("userdel %s: %v", name, err)
		}
	})
	home := filepath.Join("/home", name)
	if u, err := user.Lookup(name); err == nil {
		home = u.HomeDir
	}
	if err := os.Chmod(home, 0o755); err != nil {
		t.Fatal(err)
	}
	SetPassword(t, name, password)
	if snippet == "" {
		return name
	}
	text, err := os.ReadFile(snippet)
	if err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(t.TempDir(), "sudoers")
	if err := os.WriteFile(tmp, []byte(strings.ReplaceAll(string(text), SudoersPlaceholder, name)), 0o440); err != nil {
		t.Fatal(err)
	}
	if out, err := run(context.Background(), nil, LookPath(t, "visudo"), "-cf", tmp); err != nil {
		t.Fatalf("visudo -cf %s (from %s): %v: %s", tmp, snippet, err, out)
	}
	installed := filepath.Join("/etc/sudoers.d", name)
	data, _ := os.ReadFile(tmp)
	if err := os.WriteFile(installed, data, 0o440); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(installed) })
	return name
}

// RepoFile is the path of a file of the repository (rel from its root,
// the directory holding go.mod), from a test's working directory.
func RepoFile(t testing.TB, rel string) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, rel)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatalf("no go.mod above the test's directory; cannot find %s", rel)
		}
		dir = parent
	}
}
