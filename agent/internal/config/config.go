// Package config is the agent's configuration: flags fill a Config, Validate
// checks it, and the agent is built from it.
package config

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ferry-v2v/ferry/pkg/hostname"
	"github.com/ferry-v2v/ferry/pkg/tlsutil"
)

// Config configures one ferry-agent.
type Config struct {
	// Coordinators are the API addresses (host:port) of the coordinators;
	// any one will do, the agent finds the leader.
	Coordinators []string
	// HostName names this host: the host resource is hosts/{HostName}.
	HostName string
	// DataDir holds the agent's state and job caches when a migration
	// server has no cache path.
	DataDir string
	// Cluster is the target cluster this host belongs to (optional).
	Cluster string
	// CachePath is the directory whose disk is reported as the cache disk
	// (optional; a migration server's agent needs it to be scheduled).
	CachePath string
	// MigrationAddress is this host's address on the migration network,
	// where it serves the volumes of VMs placed on it to another host's
	// migration server when that server has no migration CIDR (or this
	// host no address inside it). Optional.
	MigrationAddress string
	// TLS: either TLSDir (ca.crt, agent.crt, agent.key, or a PKI root
	// holding agents/HostName), or the three
	// files, or Insecure for plaintext.
	TLSDir   string
	CAFile   string
	CertFile string
	KeyFile  string
	Insecure bool
	// MetricsListen is the address of the agent's Prometheus /metrics,
	// off when empty: plain HTTP on a loopback address, otherwise HTTPS
	// with the agent's own certificate for client certificates of the
	// install's CA with role operator or viewer (package promserve).
	MetricsListen string
	// Version is the agent's version, sent in hello.
	Version string
	// SourceRetryBudget is how long a copy whose source connection
	// dropped keeps reconnecting before its job fails (negative: never).
	SourceRetryBudget time.Duration
	// SourceKeepalive is how often source SSH connections are probed.
	SourceKeepalive time.Duration
	// SourceCleanupInterval is how often backups left on sources by
	// failed or crashed jobs are looked for and ended.
	SourceCleanupInterval time.Duration
	// KVMForceSnapshot names KVM sources (sources/NAME) whose running VMs
	// are copied by the snapshot method even when they have the backup
	// API: for testing that method on a modern host.
	KVMForceSnapshot []string
	// KVMCommitBandwidth limits the snapshot method's block commit on the
	// source host, in MiB/s (0: no limit).
	KVMCommitBandwidth uint64
	// KVMImageFileReader makes the snapshot method read the image files
	// (qemu-img map, dd) even where qemu-nbd exists: for testing.
	KVMImageFileReader bool
	// DomainType is the libvirt domain type of target VMs: "kvm", "qemu"
	// (TCG, software emulation), or "" to take kvm when the host's libvirt
	// offers it.
	DomainType string
	// VerifyBootTimeout bounds the wait for the guest of a job with
	// options.verify_boot to show it booted (target.DefaultBootTimeout).
	VerifyBootTimeout time.Duration
}

// Defaults of Config.
const (
	DefaultSourceRetryBudget     = 5 * time.Minute
	DefaultSourceCleanupInterval = 30 * time.Second
	DefaultSourceKeepalive       = 30 * time.Second
)

// SplitAddresses parses "ADDR[,ADDR]" into addresses.
func SplitAddresses(s string) []string {
	var out []string
	for _, a := range strings.Split(s, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

// Validate checks the configuration; the error names the flag to fix.
func (c *Config) Validate() error {
	var errs []error
	if len(c.Coordinators) == 0 {
		errs = append(errs, errors.New("--coordinator: at least one coordinator address is required"))
	}
	for _, a := range c.Coordinators {
		if _, _, err := net.SplitHostPort(a); err != nil {
			errs = append(errs, fmt.Errorf("--coordinator: %q is not host:port: %w", a, err))
		}
	}
	if err := hostname.Validate(c.HostName); err != nil {
		errs = append(errs, fmt.Errorf("--host-name: %w", err))
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("--data-dir: required"))
	}
	if c.CachePath != "" && !filepath.IsAbs(c.CachePath) {
		errs = append(errs, fmt.Errorf("--cache-path: %q must be an absolute path", c.CachePath))
	}
	if c.MigrationAddress != "" && net.ParseIP(c.MigrationAddress) == nil {
		errs = append(errs, fmt.Errorf("--migration-address: %q is not an IP address", c.MigrationAddress))
	}
	if c.SourceKeepalive < 0 {
		errs = append(errs, fmt.Errorf("--source-keepalive: %s must not be negative", c.SourceKeepalive))
	}
	switch c.DomainType {
	case "", "auto", "kvm", "qemu":
	default:
		errs = append(errs, fmt.Errorf("--domain-type: %q is not auto, kvm or qemu", c.DomainType))
	}
	if c.VerifyBootTimeout < 0 {
		errs = append(errs, fmt.Errorf("--verify-boot-timeout: %s must not be negative", c.VerifyBootTimeout))
	}
	if c.SourceCleanupInterval < 0 {
		errs = append(errs, fmt.Errorf("--source-cleanup-interval: %s must not be negative", c.SourceCleanupInterval))
	}
	errs = append(errs, c.validateTLS())
	return errors.Join(errs...)
}

func (c *Config) validateTLS() error {
	files := c.CAFile != "" || c.CertFile != "" || c.KeyFile != ""
	switch {
	case c.Insecure && (files || c.TLSDir != ""):
		return errors.New("--insecure: cannot be combined with --tls-dir, --ca, --cert or --key")
	case files && c.TLSDir != "":
		return errors.New("--tls-dir: give either --tls-dir or --ca, --cert and --key, not both")
	case files && (c.CAFile == "" || c.CertFile == "" || c.KeyFile == ""):
		return errors.New("--ca, --cert, --key: all three are required together")
	case !c.Insecure && !files && c.TLSDir == "":
		return errors.New("--tls-dir: mutual TLS needs --tls-dir or --ca, --cert and --key (or --insecure for plaintext)")
	}
	return nil
}

// TransportCredentials returns what the agent dials the coordinators with.
func (c *Config) TransportCredentials() (credentials.TransportCredentials, error) {
	switch {
	case c.Insecure:
		return insecure.NewCredentials(), nil
	case c.TLSDir != "":
		return tlsutil.ClientCredentialsFromDir(c.agentDir(), tlsutil.RoleAgent)
	default:
		return tlsutil.ClientCredentials(c.CAFile, c.CertFile, c.KeyFile)
	}
}

// MetricsTLS is the server configuration of a non-loopback
// --metrics-listen: the agent's own pair, checking scrapers against its
// CA; nil under --insecure.
func (c *Config) MetricsTLS() (*tls.Config, error) {
	switch {
	case c.Insecure:
		return nil, nil
	case c.TLSDir != "":
		dir := c.agentDir()
		return tlsutil.ServerConfigFiles(filepath.Join(dir, tlsutil.CACertFile), filepath.Join(dir, tlsutil.AgentCertFile),
			filepath.Join(dir, tlsutil.AgentKeyFile))
	default:
		return tlsutil.ServerConfigFiles(c.CAFile, c.CertFile, c.KeyFile)
	}
}

// agentDir is the directory of this host's agent certificate: --tls-dir
// itself, or its agents/HOST directory when --tls-dir is a PKI root.
func (c *Config) agentDir() string {
	if _, err := os.Stat(filepath.Join(c.TLSDir, tlsutil.AgentCertFile)); err == nil {
		return c.TLSDir
	}
	sub := filepath.Join(c.TLSDir, tlsutil.AgentsDir, c.HostName)
	if _, err := os.Stat(filepath.Join(sub, tlsutil.AgentCertFile)); err == nil {
		return sub
	}
	return c.TLSDir
}

// IdentityDir is the directory of this agent's certificate (ca.crt,
// agent.crt, agent.key) for the volumes it serves to, and uploads onto,
// another host: "" without --tls-dir (then the agent takes no part in
// cross-host uploads).
func (c Config) IdentityDir() string {
	if c.TLSDir == "" {
		return ""
	}
	return c.agentDir()
}
