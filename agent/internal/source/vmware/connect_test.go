package vmware

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1" //nolint:gosec // SHA-1 thumbprints are what vSphere shows
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/agent/internal/source/vmware/vcsimtest"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"

	"github.com/ferry-v2v/ferry/pkg/testkit"
)

func TestConnectTLS(t *testing.T) {
	sim := vcsimtest.Start(t)
	cert := sim.Server.Certificate()
	wrong := strings.Repeat("AB:", 31) + "AB"
	tests := []struct {
		name    string
		change  func(*Config)
		wantErr string
	}{
		{"pinned SHA-256", func(*Config) {}, ""},
		{"pinned SHA-1 in lower case without colons", func(c *Config) {
			c.Thumbprint = strings.ToLower(strings.ReplaceAll(Thumbprint(cert, sha1.Size), ":", ""))
		}, ""},
		{"wrong pin", func(c *Config) { c.Thumbprint = wrong },
			"expected " + wrong + ", presented " + sim.Thumbprint()},
		{"CA given", func(c *Config) { c.Thumbprint, c.CACertificatePEM = "", simCAPEM(sim) }, ""},
		{"CA given, name not in the certificate", func(c *Config) {
			c.Thumbprint, c.CACertificatePEM, c.Address = "", simCAPEM(sim), "localhost"
		}, "certificate is valid for"},
		{"CA given, hostname check skipped", func(c *Config) {
			c.Thumbprint, c.CACertificatePEM, c.Address, c.SkipHostnameCheck = "", simCAPEM(sim), "localhost", true
		}, ""},
		{"system roots", func(c *Config) { c.Thumbprint = "" }, "certificate signed by unknown authority"},
		{"wrong password", func(c *Config) { c.Password = "nope" }, "log in to"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := simConfig(t, sim)
			tt.change(&cfg)
			ctx := testContext(t, 30*time.Second)
			conn, err := Connect(ctx, cfg)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Connect: %v", err)
				}
				defer conn.Close()
				if v := conn.About().Version; v == "" || !conn.IsVCenter() {
					t.Errorf("About: version %q, vCenter %v", v, conn.IsVCenter())
				}
				return
			}
			if err == nil {
				conn.Close()
				t.Fatalf("Connect succeeded, want an error with %q", tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Connect: %v\nwant it to contain %q", err, tt.wantErr)
			}
			t.Logf("refused as expected: %v", err)
		})
	}
}

func TestConnectWrongPinIsThumbprintError(t *testing.T) {
	sim := vcsimtest.Start(t)
	cfg := simConfig(t, sim)
	cfg.Thumbprint = strings.Repeat("01", sha1.Size)
	_, err := Connect(testContext(t, 30*time.Second), cfg)
	var te *ThumbprintError
	if !errors.As(err, &te) {
		t.Fatalf("Connect: %v, want a *ThumbprintError", err)
	}
	if te.Expected != strings.TrimSuffix(strings.Repeat("01:", sha1.Size), ":") ||
		te.Presented != Thumbprint(sim.Server.Certificate(), sha1.Size) {
		t.Errorf("ThumbprintError %+v", te)
	}
}

// countingDialer counts the connections it opens.
type countingDialer struct {
	net.Dialer
	n atomic.Int64
}

func (d *countingDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	d.n.Add(1)
	return d.Dialer.DialContext(ctx, network, addr)
}

func TestConnectDialsThroughConfigDialer(t *testing.T) {
	sim := vcsimtest.Start(t)
	cfg := simConfig(t, sim)
	d := &countingDialer{}
	cfg.Dialer = d
	ctx := testContext(t, 30*time.Second)
	conn, err := Connect(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ListVMs(ctx); err != nil {
		t.Fatal(err)
	}
	conn.soap.CloseIdleConnections()
	before := d.n.Load()
	u := conn.soap.URL()
	u.Path = "/about"
	body, err := conn.download(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	body.Close()
	if before == 0 || d.n.Load() != before+1 {
		t.Errorf("dials: %d for SOAP, %d after a download; want SOAP and downloads through the dialer", before, d.n.Load())
	}
}

func TestConnectRefusesOldVersions(t *testing.T) {
	sim := vcsimtest.Start(t)
	sim.SetVCenterVersion("4.1.0")
	_, err := Connect(testContext(t, 30*time.Second), simConfig(t, sim))
	if !errors.Is(err, ErrVersion) || !strings.Contains(err.Error(), "version 4.1.0; vCenter and ESXi 5.0 or newer are needed") {
		t.Fatalf("Connect to a 4.1 vCenter: %v", err)
	}
}

// TestSourceTLS connects through Driver.Config, from the Source the
// coordinator sends, with each way of checking the server's certificate.
func TestSourceTLS(t *testing.T) {
	sim := vcsimtest.Start(t)
	wrongSHA1 := strings.Repeat("0A:", sha1.Size-1) + "0A"
	tests := []struct {
		name    string
		change  func(*ferryv1.VCenterConnection)
		wantErr string
	}{
		{"pinned SHA-256, name not in the certificate", func(v *ferryv1.VCenterConnection) { v.Address = "localhost" }, ""},
		{"pinned SHA-1 without colons", func(v *ferryv1.VCenterConnection) {
			v.Thumbprint = strings.ReplaceAll(Thumbprint(sim.Server.Certificate(), sha1.Size), ":", "")
		}, ""},
		{"wrong pin, hostname check skipped", func(v *ferryv1.VCenterConnection) {
			v.Thumbprint, v.SkipHostnameCheck = wrongSHA1, true
		}, "expected " + wrongSHA1 + ", presented " + Thumbprint(sim.Server.Certificate(), sha1.Size)},
		{"CA, name mismatch", func(v *ferryv1.VCenterConnection) {
			v.Thumbprint, v.CaCertificate, v.Address = "", simCAPEM(sim), "localhost"
		}, "certificate is valid for"},
		{"CA, name mismatch, hostname check skipped", func(v *ferryv1.VCenterConnection) {
			v.Thumbprint, v.CaCertificate, v.Address, v.SkipHostnameCheck = "", simCAPEM(sim), "localhost", true
		}, ""},
		{"other CA, hostname check skipped", func(v *ferryv1.VCenterConnection) {
			other, _ := selfSigned(t, "127.0.0.1")
			v.Thumbprint, v.CaCertificate, v.SkipHostnameCheck = "", other, true
		}, "certificate signed by unknown authority"},
		{"system roots, hostname check skipped", func(v *ferryv1.VCenterConnection) {
			v.Thumbprint, v.Address, v.SkipHostnameCheck = "", "localhost", true
		}, "certificate signed by unknown authority"},
	}
	d := NewDriver(testkit.Logger(t), Options{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src, secrets := simSource(t, sim)
			tt.change(src.GetVcenter())
			ctx := testContext(t, 30*time.Second)
			conn, err := d.connect(ctx, src, &ferryv1.MigrationServer{Name: "migrationServers/ms"}, secrets, testkit.Logger(t))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("connect: %v", err)
				}
				defer conn.Close()
				if _, err := conn.ListVMs(ctx); err != nil {
					t.Fatalf("list VMs: %v", err)
				}
				return
			}
			if err == nil {
				conn.Close()
				t.Fatalf("connect succeeded, want an error with %q", tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("connect: %v\nwant it to contain %q", err, tt.wantErr)
			}
		})
	}
}

// TestChangedCertificateRefused pins the certificate a vCenter had and
// connects after it was replaced: refused, with both thumbprints.
func TestChangedCertificateRefused(t *testing.T) {
	oldPEM, _ := selfSigned(t, "127.0.0.1")
	block, _ := pem.Decode([]byte(oldPEM))
	oldCert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	_, newCert := selfSigned(t, "127.0.0.1")
	sim := vcsimtest.StartWithCertificate(t, newCert)
	src, secrets := simSource(t, sim)
	src.GetVcenter().Thumbprint = Thumbprint(oldCert, sha256.Size)
	_, err = NewDriver(testkit.Logger(t), Options{}).connect(testContext(t, 30*time.Second), src,
		&ferryv1.MigrationServer{Name: "migrationServers/ms"}, secrets, testkit.Logger(t))
	var te *ThumbprintError
	if !errors.As(err, &te) {
		t.Fatalf("connect: %v, want a *ThumbprintError", err)
	}
	presented := Thumbprint(sim.Server.Certificate(), sha256.Size)
	if te.Expected != Thumbprint(oldCert, sha256.Size) || te.Presented != presented || te.Presented == te.Expected {
		t.Fatalf("ThumbprintError %+v, want expected %s, presented %s", te, Thumbprint(oldCert, sha256.Size), presented)
	}
	if msg := err.Error(); !strings.Contains(msg, te.Expected) || !strings.Contains(msg, presented) {
		t.Fatalf("message %q lacks the old or the new thumbprint", msg)
	}
	t.Logf("refused: %v", err)
}

// selfSigned makes a self-signed server certificate for ip, as PEM and as
// a tls.Certificate.
func selfSigned(t testing.TB, ip string) (string, tls.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: ip},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP(ip)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
