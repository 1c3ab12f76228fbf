package kvm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
	"libvirt.org/go/libvirt"

	"github.com/ferry-v2v/ferry/pkg/kvmver"
)

// keepaliveInterval is how often the SSH connection is probed (a
// variable for tests).
var keepaliveInterval = 30 * time.Second

// Conn is a connection to one KVM host: SSH, and libvirt through it.
type Conn struct {
	cfg     Config
	log     *slog.Logger
	ssh     *ssh.Client
	fwd     *forwarder
	virt    *libvirt.Connect
	hostKey string

	libVersion, qemuVersion Version
	// uid and home of the SSH user on the source host.
	uid  int
	home string
	// Whether a non-root user is in group libvirt and whether libvirt
	// was opened through sudo (docs/sudoers.ferry); whether sudo lets it
	// run the read-only qemu-nbd, once asked (sudoAllowsNBD).
	inGroupLibvirt, viaSudo bool
	sudoMu                  sync.Mutex
	sudoNBD                 *bool

	stopKeepalive context.CancelFunc
	keepalives    sync.WaitGroup
	// lost is closed once the SSH connection has ended, for whatever reason.
	lost chan struct{}

	closeOnce sync.Once
	closeErr  error
}

// Connect logs in over SSH, checks the host key, forwards a local unix
// socket to the source's libvirt socket and opens libvirt through it,
// answering SASL with cfg.SASLUser and cfg.SASLPassword when asked.
func Connect(ctx context.Context, cfg Config) (*Conn, error) {
	ownDirs := cfg.SocketDir == "" && cfg.ScratchDir == ""
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	check, err := newHostKeyCheck(cfg)
	if err != nil {
		return nil, err
	}
	log := cfg.Logger.With("component", "kvm-source", "source", cfg.hostPort())
	client, tcp, err := dialSSH(ctx, cfg, check)
	if err != nil {
		return nil, err
	}
	c := &Conn{cfg: cfg, log: log, ssh: client, hostKey: check.observedKey(), lost: make(chan struct{})}
	kctx, cancel := context.WithCancel(context.Background())
	c.stopKeepalive = cancel
	interval := keepaliveInterval
	if cfg.KeepaliveInterval > 0 {
		interval = cfg.KeepaliveInterval
	}
	c.keepalives.Go(func() { keepalive(kctx, client, tcp, interval) })
	c.keepalives.Go(func() { _ = client.Wait(); close(c.lost) })
	if cfg.PinnedHostKey == "" && cfg.KnownHostKey == "" {
		log.Info("trusting the source's SSH host key on first use", "fingerprint", c.fingerprint())
	}
	if err := c.probeUser(ctx, ownDirs); err != nil {
		c.Close()
		return nil, err
	}
	if err := c.openLibvirt(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// openLibvirt opens libvirt through the source's libvirt socket; for a
// non-root user that libvirtd does not admit, through libvirt's stdio
// bridge virt-ssh-helper run with sudo when the sudoers snippet allows
// it. A failure says what the user lacks.
func (c *Conn) openLibvirt(ctx context.Context) error {
	remote := c.cfg.LibvirtSocket
	err := c.openLibvirtVia(ctx, "socket "+remote+" over SSH", func(ctx context.Context) (net.Conn, error) {
		return c.ssh.DialContext(ctx, "unix", remote)
	})
	if err == nil || c.uid == 0 || ctx.Err() != nil {
		return err
	}
	if !c.sudoAllows(ctx, SudoVirtSSHHelper+" qemu:///system") {
		who := fmt.Sprintf("user %s is not root nor in group libvirt", c.cfg.User)
		if c.inGroupLibvirt {
			who = fmt.Sprintf("user %s is not root, and libvirtd does not admit it although it is in group libvirt", c.cfg.User)
		}
		return fmt.Errorf("%w (list VMs: %s, and it may not run `%s` without a password: make it a member of group libvirt, "+
			"give the source a SASL user, or install the sudoers snippet %s for it)", err, who, sudoLibvirtCommand, SudoersFile)
	}
	c.log.Info("libvirtd does not admit the SSH user itself; opening libvirt through sudo", "command", sudoLibvirtCommand, "err", err)
	if serr := c.openLibvirtVia(ctx, "`"+sudoLibvirtCommand+"` over SSH", c.dialSudoLibvirt); serr != nil {
		return fmt.Errorf("%w (list VMs: user %s is not root and libvirtd does not admit it; through sudo: %w)", err, c.cfg.User, serr)
	}
	c.viaSudo = true
	return nil
}

// openLibvirtVia connects libvirt through a local socket forwarded to
// the connections dial opens (how, for errors) and reads the versions.
func (c *Conn) openLibvirtVia(ctx context.Context, how string, dial func(context.Context) (net.Conn, error)) error {
	fwd, err := newForwarder(dial, c.log)
	if err != nil {
		return err
	}
	// libvirt's calls take no context: cancelling ctx ends the SSH
	// connection underneath them instead.
	stop := context.AfterFunc(ctx, func() { c.ssh.Close() })
	defer stop()
	uri := "qemu+unix:///system?socket=" + fwd.Path()
	virt, err := libvirt.NewConnectWithAuth(uri, c.saslAuth(), 0)
	if err != nil {
		fwd.Close()
		return fmt.Errorf("libvirt on source %s (%s): %w", c.cfg.hostPort(), how, errors.Join(err, ctx.Err()))
	}
	c.fwd, c.virt = fwd, virt
	lib, err := virt.GetLibVersion()
	if err != nil {
		return fmt.Errorf("libvirt version of source %s: %w", c.cfg.hostPort(), err)
	}
	hv, err := virt.GetVersion()
	if err != nil {
		return fmt.Errorf("QEMU version of source %s: %w", c.cfg.hostPort(), err)
	}
	c.libVersion, c.qemuVersion = versionOf(lib), versionOf(hv)
	c.log.Info("connected to libvirt", "libvirt", c.libVersion, "qemu", c.qemuVersion, "via", how)
	return ctx.Err()
}

// saslAuth answers libvirtd's SASL questions. Without a SASL user the
// answers stay empty and libvirtd refuses with its own message.
func (c *Conn) saslAuth() *libvirt.ConnectAuth {
	user, password := c.cfg.SASLUser, c.cfg.SASLPassword
	return &libvirt.ConnectAuth{
		CredType: []libvirt.ConnectCredentialType{libvirt.CRED_AUTHNAME, libvirt.CRED_PASSPHRASE},
		Callback: func(creds []*libvirt.ConnectCredential) {
			for _, cred := range creds {
				switch cred.Type {
				case libvirt.CRED_AUTHNAME:
					cred.Result, cred.ResultLen = user, len(user)
				case libvirt.CRED_PASSPHRASE:
					cred.Result, cred.ResultLen = password.Reveal(), len(password.Reveal())
				}
			}
			c.log.Info("answered libvirt SASL authentication", "user", user)
		},
	}
}

// ObservedHostKey is the SSH host key the source presented, in
// authorized_keys form. When neither a pinned nor a recorded key was
// given, the agent reports it so the coordinator records it.
func (c *Conn) ObservedHostKey() string { return c.hostKey }

func (c *Conn) fingerprint() string {
	fp, _ := Fingerprint(c.hostKey)
	return fp
}

// Versions returns the source's libvirt and QEMU versions.
func (c *Conn) Versions() (libvirtVersion, qemuVersion Version) {
	return c.libVersion, c.qemuVersion
}

// CheckVersions fails with ErrVersion, naming the version found, when the
// source is too old for a migration (ceph: why the job involves Ceph, see
// kvmver.CephReason; "" when it does not).
func (c *Conn) CheckVersions(ceph string) error {
	if err := checkVersions(c.libVersion, c.qemuVersion, ceph); err != nil {
		return fmt.Errorf("source %s: %w", c.cfg.hostPort(), err)
	}
	return nil
}

// CopyMethod chooses how vm's disks are copied from the source's versions
// and vm's state (kvmver.Choose): the backup API for a running or paused
// VM, a cold read of a shut-off VM's images, the snapshot method for a
// running or paused VM on a host without the backup API. A source too old
// for any method is an error wrapping ErrVersion that names both
// versions and why.
func (c *Conn) CopyMethod(vm *VM) (kvmver.Choice, error) {
	choice := copyMethod(c.libVersion, c.qemuVersion, vm.State)
	if err := choice.Error(); err != nil {
		return choice, fmt.Errorf("source %s: VM %s: %w", c.cfg.hostPort(), vm.Name, err)
	}
	return choice, nil
}

// Close ends the libvirt connection, the forwarded socket and the SSH
// connection. It may be called more than once.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		var errs []error
		if c.virt != nil {
			if _, err := c.virt.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close libvirt: %w", err))
			}
		}
		if c.fwd != nil {
			errs = append(errs, c.fwd.Close())
		}
		c.stopKeepalive()
		if err := c.ssh.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, fmt.Errorf("close SSH: %w", err))
		}
		c.keepalives.Wait()
		c.closeErr = errors.Join(errs...)
	})
	return c.closeErr
}

// lostProbe bounds the keepalive Lost sends.
const lostProbe = 5 * time.Second

// Lost reports whether the SSH connection to the source has ended or no
// longer answers a keepalive within a few seconds: what a copy that failed
// with an I/O error needs to know before reconnecting.
func (c *Conn) Lost() bool {
	select {
	case <-c.lost:
		return true
	default:
	}
	answered := make(chan error, 1)
	go func() {
		_, _, err := c.ssh.SendRequest("keepalive@openssh.com", true, nil)
		answered <- err
	}()
	select {
	case err := <-answered:
		if err == nil {
			return false
		}
	case <-c.lost:
	case <-time.After(lostProbe):
	}
	c.ssh.Close() // a connection that does not answer is given up
	return true
}

// domain looks a domain up by name; the caller frees it.
func (c *Conn) domain(name string) (*libvirt.Domain, error) {
	dom, err := c.virt.LookupDomainByName(name)
	if err != nil {
		var lerr libvirt.Error
		if errors.As(err, &lerr) && lerr.Code == libvirt.ERR_NO_DOMAIN {
			return nil, fmt.Errorf("%w: %s on source %s", ErrNoVM, name, c.cfg.hostPort())
		}
		return nil, fmt.Errorf("look up VM %s: %w", name, err)
	}
	return dom, nil
}
