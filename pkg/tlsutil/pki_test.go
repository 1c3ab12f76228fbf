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

// Paths of a PKI root made by InitPKI with testAgents.
var (
	testAgents = Options{Agents: []string{"kvm-1"}}
	coordCert  = filepath.Join(CoordinatorDir, CoordinatorCertFile)
	coordKey   = filepath.Join(CoordinatorDir, CoordinatorKeyFile)
	agentCert  = filepath.Join(AgentsDir, "kvm-1", AgentCertFile)
	agentKey   = filepath.Join(AgentsDir, "kvm-1", AgentKeyFile)
	clientCert = filepath.Join(OperatorDir, ClientCertFile)
	clientKey  = filepath.Join(OperatorDir, ClientKeyFile)
	allFiles   = []string{CACertFile, CAKeyFile, coordCert, coordKey, agentCert, agentKey, clientCert, clientKey,
		filepath.Join(CoordinatorDir, CACertFile), filepath.Join(OperatorDir, CACertFile), filepath.Join(AgentsDir, "kvm-1", CACertFile)}
)

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
	if err := InitPKI(dir, Options{Agents: testAgents.Agents, Hosts: []string{"coord-1.example", "10.0.0.5", "fd00::5", "localhost"}}); err != nil {
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
		{coordCert, CoordinatorCommonName, x509.ExtKeyUsageServerAuth},
		{coordCert, CoordinatorCommonName, x509.ExtKeyUsageClientAuth},
		{agentCert, "kvm-1", x509.ExtKeyUsageClientAuth},
		{clientCert, "ferryctl", x509.ExtKeyUsageClientAuth},
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

	coord := readCert(t, filepath.Join(dir, coordCert))
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
	// An agent serves its host's volumes to another agent (checked by
	// identity), but names no host or address: it can never pass for the
	// coordinator, which clients check by the address they dial.
	agent := readCert(t, filepath.Join(dir, agentCert))
	if _, err := agent.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Errorf("agent certificate is not valid for server auth: %v", err)
	}
	for _, name := range []string{"localhost", "127.0.0.1", "::1", "coord-1.example"} {
		if err := agent.VerifyHostname(name); err == nil {
			t.Errorf("agent certificate is valid for host %s", name)
		}
	}
	if got := agent.Subject.String(); got != "CN="+testAgents.Agents[0]+",OU=agent,O=Ferry" {
		t.Errorf("agent subject = %s", got)
	}
}

func TestInitPKIIdempotent(t *testing.T) {
	dir := t.TempDir()
	if err := InitPKI(dir, testAgents); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, dir)
	if err := InitPKI(dir, Options{Agents: testAgents.Agents, Hosts: []string{"other.example"}}); err != nil {
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
	if err := InitPKI(dir, testAgents); err != nil {
		t.Fatal(err)
	}
	caBefore, _ := os.ReadFile(filepath.Join(dir, CACertFile))
	agentBefore, _ := os.ReadFile(filepath.Join(dir, agentCert))
	// An interrupted run leaves a key without its certificate.
	os.Remove(filepath.Join(dir, clientCert))
	if err := InitPKI(dir, testAgents); err != nil {
		t.Fatalf("InitPKI on a partial directory: %v", err)
	}
	caAfter, _ := os.ReadFile(filepath.Join(dir, CACertFile))
	agentAfter, _ := os.ReadFile(filepath.Join(dir, agentCert))
	if !bytes.Equal(caBefore, caAfter) || !bytes.Equal(agentBefore, agentAfter) {
		t.Fatal("completing the directory replaced existing files")
	}
	pool := x509.NewCertPool()
	pool.AddCert(readCert(t, filepath.Join(dir, CACertFile)))
	client := readCert(t, filepath.Join(dir, clientCert))
	if _, err := client.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("reissued client certificate is not signed by the existing CA: %v", err)
	}
}

func TestInitPKIInconsistent(t *testing.T) {
	tests := []struct {
		name   string
		remove []string
	}{
		{"certificate without key", []string{agentKey}},
		{"certificates without CA", []string{CACertFile, CAKeyFile, clientCert}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := InitPKI(dir, testAgents); err != nil {
				t.Fatal(err)
			}
			for _, f := range tt.remove {
				os.Remove(filepath.Join(dir, f))
			}
			if err := InitPKI(dir, testAgents); !errors.Is(err, ErrInconsistentPKI) {
				t.Fatalf("InitPKI error = %v, want ErrInconsistentPKI", err)
			}
		})
	}
}

func TestIssue(t *testing.T) {
	dir := t.TempDir()
	if err := InitPKI(dir, Options{}); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(readCert(t, filepath.Join(dir, CACertFile)))
	for _, tt := range []struct {
		id   Identity
		path string
	}{
		{Identity{RoleIDAgent, "kvm-7"}, "agents/kvm-7/agent.crt"},
		{Identity{RoleIDViewer, "alice"}, "viewers/alice/client.crt"},
		{Identity{RoleIDOperator, "bob"}, "operators/bob/client.crt"},
	} {
		path, created, err := Issue(dir, tt.id, Options{})
		if err != nil || !created {
			t.Fatalf("Issue(%v) = %s, %v, %v", tt.id, path, created, err)
		}
		cert := readCert(t, filepath.Join(dir, tt.path))
		if got, err := IdentityFromCert(cert); err != nil || got != tt.id {
			t.Errorf("%s: identity %v, %v; want %v", tt.path, got, err, tt.id)
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("%s: %v", tt.path, err)
		}
		entries, _ := os.ReadDir(path)
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		pair := PairName(tt.id.Role)
		if want := []string{CACertFile, pair + ".crt", pair + ".key"}; !slices.Equal(sorted(names), sorted(want)) {
			t.Errorf("%s holds %v, want %v (never the CA key)", path, names, want)
		}
		again, created, err := Issue(dir, tt.id, Options{})
		if err != nil || created || again != path {
			t.Errorf("second Issue(%v) = %s, %v, %v; want left alone", tt.id, again, created, err)
		}
	}
	for _, id := range []Identity{{RoleIDAgent, "../kvm"}, {RoleIDAgent, "kvm\x1b[31m"}, {RoleIDViewer, "a/b"}, {Role("root"), "x"}, {RoleIDViewer, ".."}} {
		if _, _, err := Issue(dir, id, Options{}); !errors.Is(err, ErrInvalidIdentity) {
			t.Errorf("Issue(%v) = %v, want ErrInvalidIdentity", id, err)
		}
	}
}

func sorted(s []string) []string { s = slices.Clone(s); slices.Sort(s); return s }
