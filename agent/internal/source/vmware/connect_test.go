package vmware

import (
	"context"
	"crypto/sha1" //nolint:gosec // SHA-1 thumbprints are what vSphere shows
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmware/govmomi/simulator"

	"github.com/ferry-v2v/ferry/agent/internal/source/vmware/vcsimtest"
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
	sim := vcsimtest.StartWith(t, func(m *simulator.Model) { m.ServiceContent.About.Version = "4.1.0" })
	_, err := Connect(testContext(t, 30*time.Second), simConfig(t, sim))
	if !errors.Is(err, ErrVersion) || !strings.Contains(err.Error(), "version 4.1.0; vCenter and ESXi 5.0 or newer are needed") {
		t.Fatalf("Connect to a 4.1 vCenter: %v", err)
	}
}
