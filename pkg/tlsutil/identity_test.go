package tlsutil

import (
	"crypto/x509"
	"errors"
	"net/url"
	"path/filepath"
	"testing"
)

func TestIdentityFromCert(t *testing.T) {
	u := func(s string) *url.URL {
		v, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	cases := []struct {
		uris []*url.URL
		want Identity
		ok   bool
	}{
		{[]*url.URL{u("ferry://agent/kvm-1")}, Identity{RoleIDAgent, "kvm-1"}, true},
		{[]*url.URL{u("spiffe://x/y"), u("ferry://viewer/alice")}, Identity{RoleIDViewer, "alice"}, true},
		{nil, Identity{}, false},
		{[]*url.URL{u("ferry://root/kvm-1")}, Identity{}, false},
		{[]*url.URL{u("ferry://agent/")}, Identity{}, false},
		{[]*url.URL{u("ferry://agent/a/b")}, Identity{}, false},
		{[]*url.URL{u("ferry://agent/a"), u("ferry://agent/b")}, Identity{}, false},
	}
	for _, c := range cases {
		got, err := IdentityFromCert(&x509.Certificate{URIs: c.uris})
		if c.ok != (err == nil) || got != c.want {
			t.Errorf("%v: got %v, %v; want %v ok=%v", c.uris, got, err, c.want, c.ok)
		}
		if err != nil && !errors.Is(err, ErrNoIdentity) {
			t.Errorf("%v: error %v is not ErrNoIdentity", c.uris, err)
		}
	}
}

func TestInitPKIBindsIdentities(t *testing.T) {
	dir := t.TempDir()
	if err := InitPKI(dir, Options{Agents: []string{"kvm-1"}}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []Identity{
		{RoleIDCoordinator, CoordinatorCommonName},
		{RoleIDAgent, "kvm-1"},
		{RoleIDOperator, ClientCommonName},
	} {
		role := PairName(want.Role)
		sub := filepath.Join(dir, IdentityDir(want))
		pair, err := loadPair(filepath.Join(sub, role+".crt"), filepath.Join(sub, role+".key"))
		if err != nil {
			t.Fatal(err)
		}
		cert, err := x509.ParseCertificate(pair.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		got, err := IdentityFromCert(cert)
		if err != nil || got != want {
			t.Errorf("%s: identity %v, %v; want %v", role, got, err, want)
		}
	}
}
