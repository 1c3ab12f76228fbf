package target

import (
	"context"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/agent/internal/runner"
	"github.com/ferry-v2v/ferry/pkg/nbd"
	agentv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/agent/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/ratelimit"
	"github.com/ferry-v2v/ferry/pkg/testkit"
	"github.com/ferry-v2v/ferry/pkg/tlsutil"
)

func agentID(host string) tlsutil.Identity {
	return tlsutil.Identity{Role: tlsutil.RoleIDAgent, Name: host}
}

// TestUploadToAnotherHost: host h2's agent creates a local volume and
// serves it with real qemu-nbd over TCP with TLS from its agent
// certificate, to the migration server ms's agent alone; ms copies its
// cache image onto it under the upstream limiter and the volume holds the
// same bytes. Everyone else is refused: another agent of the install (h3),
// an operator certificate named ms, a client without TLS, a client that
// expects another host, a wrong export name. One process plays the
// agents (each with its own certificate); the link is loopback.
func TestUploadToAnotherHost(t *testing.T) {
	requireTools(t, "qemu-img", "qemu-nbd", "qemu-io")
	pki := t.TempDir()
	if err := tlsutil.InitPKI(pki, tlsutil.Options{Agents: []string{"ms", "h2", "h3"}}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := tlsutil.Issue(pki, tlsutil.Identity{Role: tlsutil.RoleIDOperator, Name: "ms"}, tlsutil.Options{}); err != nil {
		t.Fatal(err)
	}
	dirOf := func(id tlsutil.Identity) string { return filepath.Join(pki, tlsutil.IdentityDir(id)) }
	img, src := sourceImage(t)
	ctx := context.Background()

	// h2: the volume, on h2's local storage, served to ms only.
	vol, err := NameVolume(storage(ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_LOCAL, t.TempDir(), "", ""), "migrationJobs/j1", "vda", sourceSize)
	if err != nil {
		t.Fatal(err)
	}
	if err := vol.Create(ctx, ExecCommander{}); err != nil {
		t.Fatal(err)
	}
	rs, err := ServeRemote(ctx, vol, RemoteConfig{IdentityDir: dirOf(agentID("h2")), Bind: "127.0.0.1", Peer: agentID("ms"), WorkDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rs.Stop() })

	client := func(t *testing.T, self, want tlsutil.Identity) Endpoint {
		cfg, err := tlsutil.PeerClientConfig(dirOf(self), want)
		if err != nil {
			t.Fatal(err)
		}
		return Endpoint{Addr: rs.Addr(), TLS: cfg, Export: rs.Export()}
	}
	// qemu-nbd checks the client's subject after the TLS handshake and
	// hangs up: the client reads EOF where the next option reply was.
	hungUp := func(err error) bool { return errors.Is(err, io.EOF) }
	refusals := []struct {
		name string
		dst  func(t *testing.T) Endpoint
		want func(error) bool
	}{
		{"another agent of the install", func(t *testing.T) Endpoint { return client(t, agentID("h3"), agentID("h2")) }, hungUp},
		{"an operator named like the server's host", func(t *testing.T) Endpoint {
			cfg, err := tlsutil.PeerClientConfig(dirOf(agentID("ms")), agentID("h2"))
			if err != nil {
				t.Fatal(err)
			}
			op, err := tlsutil.ClientConfigFromDir(dirOf(tlsutil.Identity{Role: tlsutil.RoleIDOperator, Name: "ms"}), tlsutil.RoleClient)
			if err != nil {
				t.Fatal(err)
			}
			cfg.Certificates = op.Certificates
			return Endpoint{Addr: rs.Addr(), TLS: cfg, Export: rs.Export()}
		}, hungUp},
		{"the server expecting another host", func(t *testing.T) Endpoint { return client(t, agentID("ms"), agentID("h3")) },
			func(err error) bool { return errors.Is(err, tlsutil.ErrWrongPeer) }},
		{"no TLS", func(t *testing.T) Endpoint { return Endpoint{Addr: rs.Addr(), Export: rs.Export()} },
			func(err error) bool { return errors.Is(err, nbd.ErrTLSRequired) }},
		{"a wrong export name", func(t *testing.T) Endpoint {
			e := client(t, agentID("ms"), agentID("h2"))
			e.Export = "guess"
			return e
		}, func(err error) bool { return errors.Is(err, nbd.ErrUnknownExport) }},
	}
	for _, tt := range refusals {
		t.Run("refused: "+tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			c, err := tt.dst(t).dial(ctx, nbd.Options{})
			if err == nil {
				c.Close()
				t.Fatal("connected")
			}
			if !tt.want(err) {
				t.Fatalf("refused with the wrong error: %v", err)
			}
		})
	}

	// ms: the upload, every byte through its upstream limiter.
	lim := ratelimit.New(0)
	cp := &NBDCopier{Limiter: lim, Log: testkit.Logger(t)}
	var done, total int64
	err = cp.Copy(ctx, src, client(t, agentID("ms"), agentID("h2")), CopyOptions{DstZeroed: vol.ZeroInitialized(), Progress: func(d, tot int64) { done, total = d, tot }})
	if err != nil {
		t.Fatal(err)
	}
	if done != dataBytes || total != dataBytes || lim.Granted() < dataBytes {
		t.Errorf("progress %d of %d, limiter granted %d; want %d of %d, at least that many granted", done, total, lim.Granted(), dataBytes, dataBytes)
	}
	if err := rs.Stop(); err != nil {
		t.Fatal(err)
	}
	run(t, "qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", img, vol.Path)
}

func TestRemoteServeArgs(t *testing.T) {
	vol := Volume{Format: FormatQcow2, Path: "/var/lib/ferry/j1/vda.qcow2", Dir: "/var/lib/ferry/j1"}
	got := strings.Join(RemoteServeArgs(vol, "10.9.0.2", 10809, "tok", "/run/creds", agentID("ms")), " ")
	want := "qemu-nbd --persistent --shared=8 --format=qcow2 --bind=10.9.0.2 --port=10809 --export-name=tok " +
		"--object=tls-creds-x509,id=ferrytls,endpoint=server,verify-peer=on,dir=/run/creds " +
		"--object=authz-simple,id=ferryauthz,identity=O=Ferry,,OU=agent,,CN=ms --tls-creds=ferrytls --tls-authz=ferryauthz " +
		"--cache=writeback --discard=unmap /var/lib/ferry/j1/vda.qcow2"
	if got != want {
		t.Fatalf("args\n got %s\nwant %s", got, want)
	}
	if _, err := ServeRemote(context.Background(), vol, RemoteConfig{Bind: "127.0.0.1"}); err == nil || !errors.Is(err, err) || !strings.Contains(err.Error(), "peer identity") {
		t.Fatalf("ServeRemote without a peer: %v", err)
	}
}

// TestWhichHostWrites: a job placed on another host uploads there only
// with local storage; shared storage is written by the migration server's
// agent, and the domain is the target host's either way.
func TestWhichHostWrites(t *testing.T) {
	d := NewDriver("", Options{Remote: Remote{HostName: "ms", Targets: &relay{}}})
	for _, tc := range []struct {
		storage           ferryv1.PrimaryStorageType
		targetHost        string
		upload, configure string
	}{
		{ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_LOCAL, "hosts/h2", "hosts/h2", "hosts/h2"},
		{ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_NFS, "hosts/h2", "", "hosts/h2"},
		{ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_CEPH, "hosts/h2", "", "hosts/h2"},
		{ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_LOCAL, "hosts/ms", "", ""},
		{ferryv1.PrimaryStorageType_PRIMARY_STORAGE_TYPE_LOCAL, "", "", ""},
	} {
		j := &runner.Job{Assignment: &agentv1.Assignment{Job: &ferryv1.MigrationJob{TargetHost: tc.targetHost},
			PrimaryStorage: &ferryv1.PrimaryStorage{Type: tc.storage}}}
		if up, conf := d.uploadHostOf(j), d.targetHostOf(j); up != tc.upload || conf != tc.configure {
			t.Errorf("%s on %q: upload on %q, domain by %q; want %q, %q", tc.storage, tc.targetHost, up, conf, tc.upload, tc.configure)
		}
	}
}
