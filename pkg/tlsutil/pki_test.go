package tlsutil

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

var allFiles = []string{
	CACertFile, CAKeyFile, CoordinatorCertFile, CoordinatorKeyFile,
	AgentCertFile, AgentKeyFile, ClientCertFile, ClientKeyFile,
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("%s: no PEM block", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func snapshot(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	m := map[string][]byte{}
	for _, f := range allFiles {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		m[f] = b
	}
	return m
}

func TestInitPKI(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	if err := InitPKI(dir, Options{Hosts: []string{"coord-1.example", "10.0.0.5", "fd00::5", "localhost"}}); err != nil {
		t.Fatalf("InitPKI: %v", err)
	}
	for _, f := range allFiles {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatalf("missing %s: %v", f, err)
		}
		want := os.FileMode(0o644)
		if filepath.Ext(f) == ".key" {
			want = 0o600
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s mode = %o, want %o", f, got, want)
		}
	}

	ca := readCert(t, filepath.Join(dir, CACertFile))
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	tests := []struct {
		file  string
		cn    string
		usage x509.ExtKeyUsage
	}{
		{CoordinatorCertFile, CoordinatorCommonName, x509.ExtKeyUsageServerAuth},
		{CoordinatorCertFile, CoordinatorCommonName, x509.ExtKeyUsageClientAuth},
		{AgentCertFile, AgentCommonName, x509.ExtKeyUsageClientAuth},
		{ClientCertFile, "ferryctl", x509.ExtKeyUsageClientAuth},
	}
	for _, tt := range tests {
		cert := readCert(t, filepath.Join(dir, tt.file))
		if cert.Subject.CommonName != tt.cn {
			t.Errorf("%s CN = %q, want %q", tt.file, cert.Subject.CommonName, tt.cn)
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{tt.usage}}); err != nil {
			t.Errorf("%s does not verify for %v: %v", tt.file, tt.usage, err)
		}
	}

	coord := readCert(t, filepath.Join(dir, CoordinatorCertFile))
	for _, name := range []string{"localhost", "coord-1.example", "127.0.0.1", "::1", "10.0.0.5", "fd00::5"} {
		if err := coord.VerifyHostname(name); err != nil {
			t.Errorf("coordinator certificate lacks %s: %v", name, err)
		}
	}
	if n := len(coord.DNSNames); n != 2 {
		t.Errorf("DNS SANs = %v, want localhost and coord-1.example once each", coord.DNSNames)
	}
	if !slices.ContainsFunc(coord.IPAddresses, net.ParseIP("10.0.0.5").Equal) {
		t.Errorf("IP SANs = %v", coord.IPAddresses)
	}
	agent := readCert(t, filepath.Join(dir, AgentCertFile))
	if _, err := agent.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("agent certificate is valid for server auth")
	}
}

func TestInitPKIIdempotent(t *testing.T) {
	dir := t.TempDir()
	if err := InitPKI(dir, Options{}); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, dir)
	if err := InitPKI(dir, Options{Hosts: []string{"other.example"}}); err != nil {
		t.Fatalf("second InitPKI: %v", err)
	}
	after := snapshot(t, dir)
	for f := range before {
		if !bytes.Equal(before[f], after[f]) {
			t.Errorf("second InitPKI rewrote %s", f)
		}
	}
}

func TestInitPKICompletesWithExistingCA(t *testing.T) {
	dir := t.TempDir()
	if err := InitPKI(dir, Options{}); err != nil {
		t.Fatal(err)
	}
	caBefore, _ := os.ReadFile(filepath.Join(dir, CACertFile))
	agentBefore, _ := os.ReadFile(filepath.Join(dir, AgentCertFile))
	// An interrupted run leaves a key without its certificate.
	os.Remove(filepath.Join(dir, ClientCertFile))
	if err := InitPKI(dir, Options{}); err != nil {
		t.Fatalf("InitPKI on a partial directory: %v", err)
	}
	caAfter, _ := os.ReadFile(filepath.Join(dir, CACertFile))
	agentAfter, _ := os.ReadFile(filepath.Join(dir, AgentCertFile))
	if !bytes.Equal(caBefore, caAfter) || !bytes.Equal(agentBefore, agentAfter) {
		t.Fatal("completing the directory replaced existing files")
	}
	pool := x509.NewCertPool()
	pool.AddCert(readCert(t, filepath.Join(dir, CACertFile)))
	client := readCert(t, filepath.Join(dir, ClientCertFile))
	if _, err := client.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("reissued client certificate is not signed by the existing CA: %v", err)
	}
}

func TestInitPKIInconsistent(t *testing.T) {
	tests := []struct {
		name   string
		remove []string
	}{
		{"certificate without key", []string{AgentKeyFile}},
		{"certificates without CA", []string{CACertFile, CAKeyFile, ClientCertFile}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := InitPKI(dir, Options{}); err != nil {
				t.Fatal(err)
			}
			for _, f := range tt.remove {
				os.Remove(filepath.Join(dir, f))
			}
			if err := InitPKI(dir, Options{}); !errors.Is(err, ErrInconsistentPKI) {
				t.Fatalf("InitPKI error = %v, want ErrInconsistentPKI", err)
			}
		})
	}
}
