package kvm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// ErrHostKeyMismatch reports a source host whose SSH host key is not the
// pinned or recorded one.
var ErrHostKeyMismatch = errors.New("SSH host key mismatch")

// handshakeTimeout bounds the SSH handshake when ctx has no deadline.
const handshakeTimeout = 30 * time.Second

// hostKeyCheck verifies the server's host key against the pinned or the
// recorded key, or trusts and records the first one, and remembers what
// the server presented.
type hostKeyCheck struct {
	source   string // host:port, for errors
	want     ssh.PublicKey
	wantKind string // "pinned" or "recorded"

	mu       sync.Mutex
	observed ssh.PublicKey
	err      error // the mismatch, if any
}

func newHostKeyCheck(cfg Config) (*hostKeyCheck, error) {
	h := &hostKeyCheck{source: cfg.hostPort()}
	key, kind := cfg.PinnedHostKey, "pinned"
	if key == "" {
		key, kind = cfg.KnownHostKey, "recorded"
	}
	if key == "" {
		return h, nil
	}
	pub, err := parseHostKey(key)
	if err != nil {
		return nil, fmt.Errorf("%w: %s host key: %w", ErrConfig, kind, err)
	}
	h.want, h.wantKind = pub, kind
	return h, nil
}

func (h *hostKeyCheck) callback(_ string, _ net.Addr, key ssh.PublicKey) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.observed = key
	if h.want == nil || bytes.Equal(h.want.Marshal(), key.Marshal()) {
		return nil
	}
	h.err = h.mismatch(ssh.FingerprintSHA256(key))
	return h.err
}

// failure returns the mismatch the callback found, if any.
func (h *hostKeyCheck) failure() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.err
}

func (h *hostKeyCheck) mismatch(presented string) error {
	return fmt.Errorf("%w: source %s presented %s but the %s host key is %s; "+
		"if the host was really reinstalled, update the source's host key",
		ErrHostKeyMismatch, h.source, presented, h.wantKind, ssh.FingerprintSHA256(h.want))
}

// algorithms limits the host key algorithms to the expected key's, so a
// server with several host keys presents the one we can check.
func (h *hostKeyCheck) algorithms() []string {
	if h.want == nil {
		return nil
	}
	if h.want.Type() == ssh.KeyAlgoRSA {
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}
	}
	return []string{h.want.Type()}
}

// observedKey returns the key the server presented, in authorized_keys
// form, or "" before the handshake.
func (h *hostKeyCheck) observedKey() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.observed == nil {
		return ""
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(h.observed)))
}

// parseHostKey parses a public key in authorized_keys form ("ssh-ed25519
// AAAA... comment"); a known_hosts line's leading host names are not
// accepted.
func parseHostKey(s string) (ssh.PublicKey, error) {
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(s))
	if err != nil {
		return nil, fmt.Errorf("not an SSH public key in authorized_keys form: %w", err)
	}
	return pub, nil
}

// Fingerprint returns the SHA256:... fingerprint of a public key in
// authorized_keys form.
func Fingerprint(authorizedKey string) (string, error) {
	pub, err := parseHostKey(authorizedKey)
	if err != nil {
		return "", err
	}
	return ssh.FingerprintSHA256(pub), nil
}

// authMethods returns the SSH authentication methods of cfg: the key
// first, then the password (also answering keyboard-interactive prompts).
func authMethods(cfg Config) ([]ssh.AuthMethod, error) {
	var methods []ssh.AuthMethod
	if !cfg.PrivateKeyPEM.IsZero() {
		signer, err := ssh.ParsePrivateKey([]byte(cfg.PrivateKeyPEM.Reveal()))
		if err != nil {
			return nil, fmt.Errorf("%w: private key: %w", ErrConfig, err)
		}
		methods = append(methods, ssh.PublicKeys(signer))
	}
	if !cfg.Password.IsZero() {
		pw := cfg.Password.Reveal()
		methods = append(methods, ssh.Password(pw),
			ssh.KeyboardInteractive(func(_, _ string, questions []string, _ []bool) ([]string, error) {
				answers := make([]string, len(questions))
				for i := range answers {
					answers[i] = pw
				}
				return answers, nil
			}))
	}
	return methods, nil
}

// dialSSH opens the SSH connection through cfg.Dialer and returns it with
// its TCP connection. The host key check runs during the handshake; ctx
// bounds the dial and the handshake.
func dialSSH(ctx context.Context, cfg Config, check *hostKeyCheck) (*ssh.Client, net.Conn, error) {
	auth, err := authMethods(cfg)
	if err != nil {
		return nil, nil, err
	}
	addr := cfg.hostPort()
	tcp, err := cfg.Dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to source %s: %w", addr, err)
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(handshakeTimeout)
	}
	_ = tcp.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = tcp.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	sc, chans, reqs, err := ssh.NewClientConn(tcp, addr, &ssh.ClientConfig{
		User:              cfg.User,
		Auth:              auth,
		HostKeyCallback:   check.callback,
		HostKeyAlgorithms: check.algorithms(),
	})
	if err != nil {
		tcp.Close()
		if mismatch := check.failure(); mismatch != nil {
			return nil, nil, mismatch
		}
		if check.want != nil && strings.Contains(err.Error(), "no common algorithm for host key") {
			return nil, nil, check.mismatch("no key of type " + check.want.Type())
		}
		return nil, nil, fmt.Errorf("SSH login to source %s as %s: %w", addr, cfg.User, errors.Join(err, ctx.Err()))
	}
	if !stop() {
		sc.Close()
		return nil, nil, fmt.Errorf("SSH login to source %s: %w", addr, ctx.Err())
	}
	_ = tcp.SetDeadline(time.Time{})
	return ssh.NewClient(sc, chans, reqs), tcp, nil
}

// keepalive asks the server for a reply every interval and lets the TCP
// connection read for at most three intervals past the last reply, so a
// source that vanished (no FIN, no RST) ends the connection and every
// forwarded stream instead of hanging them. It returns when ctx ends or
// the connection fails.
func keepalive(ctx context.Context, client *ssh.Client, tcp net.Conn, interval time.Duration) {
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		if _, _, err := client.SendRequest("keepalive@openssh.com", true, nil); err != nil {
			return
		}
		_ = tcp.SetReadDeadline(time.Now().Add(3 * interval))
	}
}

// runRemote runs a shell command on the source host and returns its
// standard output; ctx cancellation closes the session.
func runRemote(ctx context.Context, client *ssh.Client, command string) (string, error) {
	session, err := client.NewSession()
	if err != nil {
		return "", fmt.Errorf("open SSH session: %w", err)
	}
	defer session.Close()
	stop := context.AfterFunc(ctx, func() { session.Close() })
	defer stop()
	// Stdout only: what the user's shell start-up files print on stderr
	// (a login banner, pyenv's "cannot rehash", seen on a source whose
	// logins raced) must not be read as the command's answer. It goes in
	// the error of a command that fails.
	var stdout, stderr bytes.Buffer
	session.Stdout, session.Stderr = &stdout, &stderr
	if err := session.Run(command); err != nil {
		return stdout.String(), fmt.Errorf("run %q on source: %w: %s", command, errors.Join(err, ctx.Err()),
			strings.TrimSpace(stderr.String()+"\n"+stdout.String()))
	}
	return stdout.String(), nil
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
