package target

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"

	"github.com/ferry-v2v/ferry/agent/internal/cache"
	"github.com/ferry-v2v/ferry/pkg/tlsutil"
)

// RemoteConfig says how a target host's agent serves one of its volumes
// to the migration server's agent of the job, over the migration network
// (see docs/placement.md).
type RemoteConfig struct {
	// QemuNBD is qemu-nbd's path; "" is qemu-nbd on PATH.
	QemuNBD string
	// IdentityDir is this agent's PKI directory: ca.crt, agent.crt,
	// agent.key. qemu-nbd serves with this agent's certificate and asks
	// the client for one signed by the same CA.
	IdentityDir string
	// Bind is the address to listen on: this host's address on the
	// migration network.
	Bind string
	// Port is the TCP port; 0 picks a free one.
	Port int
	// Peer is the only identity allowed to connect: the migration
	// server's agent of the job.
	Peer tlsutil.Identity
	// WorkDir holds the qemu-nbd's TLS credentials directory while it
	// runs; "" is os.TempDir().
	WorkDir string
}

// RemoteServer is a volume served writable over TCP with TLS to one peer.
type RemoteServer struct {
	srv      *cache.Server
	export   string
	credsDir string
}

// Addr is where the volume is served (host:port).
func (r *RemoteServer) Addr() string { return r.srv.Addr() }

// Export is the export name: a random token per serving, which the peer
// must name.
func (r *RemoteServer) Export() string { return r.export }

// Stop stops qemu-nbd (which flushes the volume) and removes the
// credentials directory.
func (r *RemoteServer) Stop() error {
	err := r.srv.Stop()
	if rerr := os.RemoveAll(r.credsDir); err == nil {
		err = rerr
	}
	return err
}

// ServeRemote serves vol writable with qemu-nbd on cfg.Bind, TLS with this
// agent's certificate, the client's checked against the CA
// (verify-peer=on) and its subject against cfg.Peer's (--tls-authz): no
// other agent, operator or client without a certificate completes the TLS
// handshake. The export is named by a random token. The caller stops it.
func ServeRemote(ctx context.Context, vol Volume, cfg RemoteConfig) (*RemoteServer, error) {
	if cfg.Bind == "" || !cfg.Peer.Role.Valid() || cfg.Peer.Name == "" {
		return nil, errors.New("serve volume remotely: a bind address and a peer identity are required")
	}
	creds, err := os.MkdirTemp(cfg.WorkDir, "ferry-tls-")
	if err != nil {
		return nil, fmt.Errorf("serve volume %s: %w", vol.Path, err)
	}
	r, err := serveRemote(ctx, vol, cfg, creds)
	if err != nil {
		_ = os.RemoveAll(creds)
		return nil, fmt.Errorf("serve volume %s: %w", vol.Path, err)
	}
	return r, nil
}

func serveRemote(ctx context.Context, vol Volume, cfg RemoteConfig, creds string) (*RemoteServer, error) {
	for name, src := range tlsutil.QEMUCredsFiles(cfg.IdentityDir) {
		b, err := os.ReadFile(src)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(creds, name), b, 0o600); err != nil {
			return nil, err
		}
	}
	token, err := exportToken()
	if err != nil {
		return nil, err
	}
	port := cfg.Port
	if port == 0 {
		if port, err = freePort(cfg.Bind); err != nil {
			return nil, err
		}
	}
	addr := net.JoinHostPort(cfg.Bind, strconv.Itoa(port))
	srv, err := cache.StartServer(cache.ServerConfig{Program: cfg.QemuNBD, Args: RemoteServeArgs(vol, cfg.Bind, port, token, creds, cfg.Peer)[1:], Addr: addr})
	if err != nil {
		return nil, err
	}
	if err := srv.Ready(ctx); err != nil {
		_ = srv.Stop()
		return nil, err
	}
	return &RemoteServer{srv: srv, export: token, credsDir: creds}, nil
}

// RemoteServeArgs is the qemu-nbd command line of ServeRemote.
func RemoteServeArgs(vol Volume, bind string, port int, export, credsDir string, peer tlsutil.Identity) []string {
	args := []string{"qemu-nbd", "--persistent", "--shared=8", "--format=" + vol.Format,
		"--bind=" + bind, "--port=" + strconv.Itoa(port), "--export-name=" + export,
		"--object=tls-creds-x509,id=ferrytls,endpoint=server,verify-peer=on,dir=" + credsDir,
		"--object=authz-simple,id=ferryauthz,identity=" + qemuOptEscape(tlsutil.DistinguishedName(peer)),
		"--tls-creds=ferrytls", "--tls-authz=ferryauthz"}
	if vol.BlockDevice() {
		args = append(args, "--cache=none", "--aio=native")
	} else {
		args = append(args, "--cache=writeback")
	}
	return append(args, "--discard=unmap", vol.Path)
}

// qemuOptEscape doubles the commas of a QEMU option value.
func qemuOptEscape(s string) string {
	out := make([]byte, 0, len(s)+4)
	for i := 0; i < len(s); i++ {
		if s[i] == ',' {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	return string(out)
}

func exportToken() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

// freePort asks the kernel for a free TCP port on host. Another process
// may take it before qemu-nbd binds it; qemu-nbd then fails to start and
// the caller tries again.
func freePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
