// Package kvm is the KVM source driver: it reaches a libvirt host over SSH
// (password or key, host key pinned or trusted on first use), lists its
// running and paused domains, and copies a running domain's disks
// consistently with libvirt's backup API in pull mode, reading each disk's
// NBD export through the same SSH connection.
//
// Everything the driver leaves on the source host is named after
// BackupPrefix: NBD sockets in Config.SocketDir and scratch files in
// Config.ScratchDir. Backup.Close removes them and ends the job on every
// path; CleanupStale does the same after an agent crash.
package kvm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path"
	"strings"
	"time"

	"github.com/ferry-v2v/ferry/pkg/seal"
)

// Defaults of Config.
const (
	DefaultPort          = 22
	DefaultUser          = "root"
	DefaultLibvirtSocket = "/var/run/libvirt/libvirt-sock"
	// DefaultSocketDir is where qemu (user libvirt-qemu) may create the
	// backup's NBD socket and sshd (as root) may connect to it.
	DefaultSocketDir = "/var/lib/libvirt/qemu"
	// DefaultScratchDir holds the backup's per-disk scratch images: the
	// blocks the guest overwrites while the backup runs.
	DefaultScratchDir = "/var/lib/libvirt/images"
)

// BackupPrefix starts the name of every socket and scratch file that the
// driver creates on a source host.
const BackupPrefix = "ferry-backup-"

// ContextDialer opens the SSH connection's TCP stream; *net.Dialer from
// pkg/netsel binds it to the migration CIDR.
type ContextDialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// Config says how to reach one KVM host.
type Config struct {
	// Address is the host name or IP address of the source host.
	Address string
	// Port is the SSH port (DefaultPort when 0).
	Port int
	// User logs in over SSH (DefaultUser when empty).
	User string
	// Password or PrivateKeyPEM authenticates User; at least one is set.
	Password      seal.Secret
	PrivateKeyPEM seal.Secret
	// PinnedHostKey, in authorized_keys form, is the only host key
	// accepted. Without it, KnownHostKey (recorded on first use) is the
	// only one accepted; without either, the first key seen is trusted
	// and reported by Conn.ObservedHostKey.
	PinnedHostKey string
	KnownHostKey  string
	// SASLUser and SASLPassword answer libvirtd when it demands SASL.
	SASLUser     string
	SASLPassword seal.Secret
	// Dialer opens the TCP connection (a plain net.Dialer when nil).
	Dialer ContextDialer
	// Logger receives the driver's logs (slog.Default() when nil).
	Logger *slog.Logger
	// KeepaliveInterval is how often the SSH connection is probed; one
	// silent for three intervals is given up (30 s when 0).
	KeepaliveInterval time.Duration

	// CommitBandwidth limits the snapshot method's block commit, in MiB/s
	// (0: as fast as the source host's storage goes).
	CommitBandwidth uint64
	// ImageFileReader makes the snapshot method read the image files
	// with their allocation maps even where the source host has qemu-nbd
	// (for testing that reader).
	ImageFileReader bool

	// Paths on the source host; the defaults suit Debian, Ubuntu and
	// RHEL-family libvirt packages.
	LibvirtSocket string
	SocketDir     string
	ScratchDir    string
}

// ErrConfig reports an unusable Config.
var ErrConfig = errors.New("kvm source configuration")

// withDefaults returns a copy of c with the defaults filled in.
func (c Config) withDefaults() Config {
	if c.Port == 0 {
		c.Port = DefaultPort
	}
	if c.User == "" {
		c.User = DefaultUser
	}
	if c.Dialer == nil {
		c.Dialer = &net.Dialer{}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.LibvirtSocket == "" {
		c.LibvirtSocket = DefaultLibvirtSocket
	}
	if c.SocketDir == "" {
		c.SocketDir = DefaultSocketDir
	}
	if c.ScratchDir == "" {
		c.ScratchDir = DefaultScratchDir
	}
	return c
}

// Validate checks the configuration; the error names the field to fix.
func (c Config) Validate() error {
	var errs []error
	if c.Address == "" || strings.ContainsAny(c.Address, " /") {
		errs = append(errs, fmt.Errorf("%w: address %q must be a host name or IP address", ErrConfig, c.Address))
	}
	if c.Port < 0 || c.Port > 65535 {
		errs = append(errs, fmt.Errorf("%w: port %d is out of range", ErrConfig, c.Port))
	}
	if c.Password.IsZero() && c.PrivateKeyPEM.IsZero() {
		errs = append(errs, fmt.Errorf("%w: a password or a private key is required", ErrConfig))
	}
	for _, k := range [][2]string{{"pinned host key", c.PinnedHostKey}, {"known host key", c.KnownHostKey}} {
		if k[1] == "" {
			continue
		}
		if _, err := parseHostKey(k[1]); err != nil {
			errs = append(errs, fmt.Errorf("%w: %s: %w", ErrConfig, k[0], err))
		}
	}
	for _, p := range [][2]string{{"libvirt socket", c.LibvirtSocket}, {"socket directory", c.SocketDir},
		{"scratch directory", c.ScratchDir}} {
		if p[1] != "" && (!path.IsAbs(p[1]) || strings.ContainsAny(p[1], "'\n")) {
			errs = append(errs, fmt.Errorf("%w: %s %q must be an absolute path without quotes", ErrConfig, p[0], p[1]))
		}
	}
	return errors.Join(errs...)
}

// hostPort is the SSH address, also used to name the source in errors.
func (c Config) hostPort() string {
	return net.JoinHostPort(c.Address, fmt.Sprint(c.Port))
}
