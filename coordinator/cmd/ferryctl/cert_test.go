package main

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/coordinator/internal/testcluster"
	"github.com/ferry-v2v/ferry/pkg/tlsutil"
)

// TestFerryctlCert: a viewer may list the revocation list but not revoke;
// an operator revokes the viewer's certificate by its serial as openssl
// prints it; the list shows it; the viewer is refused from then on.
func TestFerryctlCert(t *testing.T) {
	c := testcluster.Start(t, 1)
	addr := c.Leader(10 * time.Second).Addr()
	alice := tlsutil.Identity{Role: tlsutil.RoleIDViewer, Name: "alice"}
	aliceDir := c.Issue(alice)
	viewer := &cli{t: t, server: addr, tlsDir: aliceDir}
	operator := &cli{t: t, server: addr, tlsDir: c.TLSDir}

	if out := viewer.ok("cert", "list"); !strings.Contains(out, "SERIAL") {
		t.Fatalf("viewer's cert list: %q", out)
	}
	cert, err := tlsutil.ReadCertificate(filepath.Join(aliceDir, tlsutil.ClientCertFile))
	if err != nil {
		t.Fatal(err)
	}
	serial := tlsutil.SerialString(cert)
	r := viewer.run("cert", "revoke", serial)
	if r.code == 0 || !strings.Contains(r.err, "PERMISSION_DENIED: role viewer (ferry://viewer/alice) may not call /ferry.v1.CertificateService/RevokeCertificate") {
		t.Fatalf("viewer revoking: exit %d, %q", r.code, r.err)
	}
	out := operator.ok("cert", "revoke", strings.ToUpper(serial), "--reason", "left the team")
	if !strings.Contains(out, serial) || !strings.Contains(out, "ferry://operator/ferryctl") {
		t.Fatalf("cert revoke printed %q", out)
	}
	list := operator.ok("cert", "list")
	if !strings.Contains(list, serial) || !strings.Contains(list, "left the team") {
		t.Fatalf("cert list: %q", list)
	}
	if r := viewer.run("cert", "list"); r.code == 0 {
		t.Fatalf("the revoked viewer still lists: %q", r.out)
	}

	// --request-id: a repeat answers the entry; another serial is refused.
	first := operator.ok("cert", "revoke", "1f", "--request-id", "cli-rv-1", "--reason", "lost")
	if again := operator.ok("cert", "revoke", "1F", "--request-id", "cli-rv-1", "--reason", "lost"); again != first {
		t.Fatalf("repeat printed %q, first %q", again, first)
	}
	r = operator.run("cert", "revoke", "20", "--request-id", "cli-rv-1")
	if r.code == 0 || !strings.Contains(r.err, `INVALID_ARGUMENT: request_id: "cli-rv-1" was already used by RevokeCertificate on revokedCertificates/1f`) {
		t.Fatalf("reused --request-id: exit %d, %q", r.code, r.err)
	}
}
