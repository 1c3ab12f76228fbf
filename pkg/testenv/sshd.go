package testenv

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-v2v/ferry/pkg/testkit"
	"golang.org/x/crypto/ssh"
)

// The local user that password tests log in as. It is created on first
// use (idempotently), in group libvirt so that polkit lets it use the
// libvirt socket, with this password. Root logs in with a key.
const (
	TestUser     = "ferrytest"
	TestPassword = "ferry-test-password"
)

// SSHDOptions configure StartSSHD.
type SSHDOptions struct {
	// PasswordUser, when set, turns on password login and makes sure the
	// local user exists with Password (TestUser and TestPassword are
	// the usual pair).
	PasswordUser string
	Password     string
	// PasswordLogin turns on password login for the users that already
	// exist (e.g. a RootAlias), without PasswordUser.
	PasswordLogin bool
	// NetNS, when set, runs sshd inside that network namespace, listening
	// on ListenAddresses (the first becomes Host); readiness is then read
	// from sshd's log, as the test's namespace may not reach them.
	NetNS           *NetNS
	ListenAddresses []string
}

// SSHD is an OpenSSH sshd listening on 127.0.0.1.
type SSHD struct {
	Host string // 127.0.0.1
	Port int
	Addr string // Host:Port
	// User is the account the client key is meant for: root.
	User string
	// ClientKeyPEM is the OpenSSH private key that every user's
	// authorized_keys file (one file, in the temporary directory) holds.
	ClientKeyPEM []byte
	// HostKey is the server's public host key in authorized_keys form
	// ("ssh-ed25519 AAAA..."), HostKeyFingerprint its SHA256:... form.
	HostKey            string
	HostKeyFingerprint string
	// PasswordUser and Password log in with a password, when asked for.
	PasswordUser string
	Password     string
	// Dir holds the configuration, keys and sshd.log.
	Dir string

	netns         *NetNS
	listen        []string
	passwordLogin bool
}

// StartSSHD runs `sshd -D -e -f CONFIG` on a free loopback port with a
// generated ed25519 host key, UsePAM no, root login, stream-local and TCP
// forwarding allowed. It is killed when the test ends; its log is printed
// if the test failed.
func StartSSHD(t testing.TB, opts SSHDOptions) *SSHD {
	t.Helper()
	RequireRoot(t)
	bin := LookPath(t, "sshd")
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		t.Fatal(err)
	}
	if opts.PasswordUser != "" {
		EnsureUser(t, opts.PasswordUser, opts.Password)
	}
	s := &SSHD{Host: "127.0.0.1", User: "root", PasswordUser: opts.PasswordUser,
		Password: opts.Password, Dir: t.TempDir(), netns: opts.NetNS, listen: opts.ListenAddresses,
		passwordLogin: opts.PasswordLogin || opts.PasswordUser != ""}
	if len(s.listen) == 0 {
		s.listen = []string{s.Host}
	}
	s.Host = s.listen[0]
	s.writeKeys(t)
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		if err = s.start(t, bin); err == nil {
			return s
		}
	}
	t.Fatalf("start sshd: %v", err)
	return nil
}

// writeKeys generates the host key and the client key.
func (s *SSHD) writeKeys(t testing.TB) {
	t.Helper()
	hostPub, hostPEM := generateKey(t, "ferry-test-host")
	clientPub, clientPEM := generateKey(t, "ferry-test-client")
	s.HostKey = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(hostPub)))
	s.HostKeyFingerprint = ssh.FingerprintSHA256(hostPub)
	s.ClientKeyPEM = clientPEM
	writeFile(t, filepath.Join(s.Dir, "host_ed25519"), hostPEM, 0o600)
	writeFile(t, filepath.Join(s.Dir, "authorized_keys"), ssh.MarshalAuthorizedKey(clientPub), 0o644)
}

// start writes the configuration for a free port and starts sshd. An
// error means sshd exited early (the port was taken meanwhile).
func (s *SSHD) start(t testing.TB, bin string) error {
	t.Helper()
	s.Port = freePort(t)
	s.Addr = net.JoinHostPort(s.Host, strconv.Itoa(s.Port))
	config := filepath.Join(s.Dir, "sshd_config")
	writeFile(t, config, []byte(s.config()), 0o600)
	logPath := filepath.Join(s.Dir, "sshd.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	argv := s.netns.Command(bin, "-D", "-e", "-f", config)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatalf("start sshd: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	listening := func() bool {
		if s.netns != nil {
			log, _ := os.ReadFile(logPath)
			return strings.Count(string(log), "Server listening on") >= len(s.listen) || len(exited) > 0
		}
		c, err := net.DialTimeout("tcp", s.Addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil || len(exited) > 0
	}
	if !poll(10*time.Second, 20*time.Millisecond, listening) || len(exited) > 0 {
		_ = cmd.Process.Kill()
		<-exited
		log, _ := os.ReadFile(logPath)
		return fmt.Errorf("sshd did not listen on %s: %s", s.Addr, log)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			log, _ := os.ReadFile(logPath)
			t.Logf("sshd log:\n%s", log)
		}
	})
	return nil
}

func (s *SSHD) config() string {
	password := "no"
	if s.passwordLogin {
		password = "yes"
	}
	lines := []string{
		"Port " + strconv.Itoa(s.Port),
		"HostKey " + filepath.Join(s.Dir, "host_ed25519"),
		"PidFile " + filepath.Join(s.Dir, "sshd.pid"),
		"AuthorizedKeysFile " + filepath.Join(s.Dir, "authorized_keys"),
		"UsePAM no",
		"StrictModes no", // the temporary directory lives under world-writable /tmp
		"PermitRootLogin yes",
		"PubkeyAuthentication yes",
		"PasswordAuthentication " + password,
		"KbdInteractiveAuthentication no",
		"AllowStreamLocalForwarding yes",
		"AllowTcpForwarding yes",
		"LogLevel VERBOSE",
	}
	for _, a := range s.listen {
		lines = append(lines, "ListenAddress "+a)
	}
	return strings.Join(lines, "\n") + "\n"
}

// ClientConfig returns an x/crypto/ssh client configuration for User with
// the client key that checks the host key.
func (s *SSHD) ClientConfig(t testing.TB) *ssh.ClientConfig {
	t.Helper()
	signer, err := ssh.ParsePrivateKey(s.ClientKeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	hostKey, _, _, _, err := ssh.ParseAuthorizedKey([]byte(s.HostKey))
	if err != nil {
		t.Fatal(err)
	}
	return &ssh.ClientConfig{
		User:            s.User,
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: ssh.FixedHostKey(hostKey),
		Timeout:         10 * time.Second,
	}
}

// EnsureUser creates the local user (home directory, group libvirt when it
// exists) unless it exists, and sets its password. Concurrent test
// binaries may race on /etc/passwd's lock; that is retried.
func EnsureUser(t testing.TB, name, password string) {
	t.Helper()
	RequireRoot(t)
	var args []string
	if _, err := user.LookupGroup("libvirt"); err == nil {
		args = append(args, "-G", "libvirt")
	}
	var err error
	ok := poll(10*time.Second, 100*time.Millisecond, func() bool {
		if _, lookupErr := user.Lookup(name); lookupErr != nil {
			_, err = run(context.Background(), nil, LookPath(t, "useradd"),
				append(args, "-m", "-s", "/bin/sh", name)...)
			return false // look it up again
		}
		if len(args) > 0 {
			if _, err = run(context.Background(), nil, LookPath(t, "usermod"), "-aG", "libvirt", name); err != nil {
				return false
			}
		}
		_, err = run(context.Background(), []byte(name+":"+password+"\n"), LookPath(t, "chpasswd"))
		return err == nil
	})
	if !ok {
		t.Fatalf("create test user %s: %v", name, err)
	}
	// A home left by an earlier user of the name (useradd -m keeps it)
	// may belong to another uid: the user could not write its ~/.ferry.
	if u, err := user.Lookup(name); err == nil && u.HomeDir != "" {
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if st, err := os.Stat(u.HomeDir); err == nil {
			if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != uid {
				if err := os.Chown(u.HomeDir, uid, gid); err != nil {
					t.Fatalf("give test user %s its home %s: %v", name, u.HomeDir, err)
				}
			}
		}
	}
}

// generateKey returns an ed25519 public key and its private key in
// OpenSSH PEM form.
func generateKey(t testing.TB, comment string) (ssh.PublicKey, []byte) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		t.Fatal(err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return sshPub, pem.EncodeToMemory(block)
}

// freePort returns a loopback TCP port that was free a moment ago, below
// the ephemeral range (testkit.FreePort), so no outgoing connection takes
// it before sshd binds it.
func freePort(t testing.TB) int { return testkit.FreePort(t) }

func writeFile(t testing.TB, path string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatal(err)
	}
}

// EnsureRootAlias makes sure a second name for root exists — uid and gid
// 0, home /root — with password, so a test can log in to a KVM source as
// root with a password (the driver needs root on the source) without
// touching root's own password. Idempotent; the password is set each time
// and the account locked again when the test ends.
func EnsureRootAlias(t testing.TB, name, password string) {
	t.Helper()
	RequireRoot(t)
	var err error
	ok := poll(10*time.Second, 100*time.Millisecond, func() bool {
		u, lookupErr := user.Lookup(name)
		if lookupErr != nil {
			_, err = run(context.Background(), nil, LookPath(t, "useradd"),
				"-o", "-u", "0", "-g", "0", "-M", "-d", "/root", "-s", "/bin/sh", name)
			return false // look it up again
		}
		if u.Uid != "0" {
			err = fmt.Errorf("user %s exists with uid %s, not 0", name, u.Uid)
			return false
		}
		_, err = run(context.Background(), []byte(name+":"+password+"\n"), LookPath(t, "chpasswd"))
		return err == nil
	})
	if !ok {
		t.Fatalf("create root alias %s: %v", name, err)
	}
	// Nobody logs in as the alias once the test is over.
	t.Cleanup(func() { _, _ = run(context.Background(), nil, LookPath(t, "usermod"), "-L", name) })
}

// RootAlias makes name a second login of uid 0 with password, for tests
// that must log in as root with a password (sshd takes the password of the
// name, from /etc/shadow, and the rights of uid 0) without touching root's
// own password. The account is removed when the test ends; SetPassword
// changes its password meanwhile.
func RootAlias(t testing.TB, name, password string) {
	t.Helper()
	RequireRoot(t)
	if u, err := user.Lookup(name); err == nil && u.Uid != "0" {
		t.Fatalf("user %s exists with uid %s; RootAlias wants a name of its own", name, u.Uid)
	} else if err != nil {
		if _, err := run(context.Background(), nil, LookPath(t, "useradd"), "-o", "-u", "0", "-g", "0", "-M", "-d", "/root",
			"-s", "/bin/sh", name); err != nil {
			t.Fatalf("useradd %s: %v", name, err)
		}
	}
	t.Cleanup(func() {
		if _, err := run(context.Background(), nil, LookPath(t, "userdel"), "-f", name); err != nil {
			t.Errorf("userdel %s: %v (remove it by hand: it logs in as root)", name, err)
		}
	})
	SetPassword(t, name, password)
}

// SetPassword sets a local user's password.
func SetPassword(t testing.TB, name, password string) {
	t.Helper()
	if _, err := run(context.Background(), []byte(name+":"+password+"\n"), LookPath(t, "chpasswd")); err != nil {
		t.Fatalf("chpasswd %s: %v", name, err)
	}
}
