// Package vmware is the VMware source driver: it logs in to a vCenter or
// an ESXi host with govmomi, lists its VMs, and copies a VM's disks into
// the cache. A running VM is shut down through VMware Tools (powered off
// when the guest does not stop within Config.ShutdownTimeout); the driver
// then takes a snapshot, exports it through an NFC lease kept alive with
// progress updates, decodes each disk's VMDK stream into its cache image
// (all disks in parallel), and releases the lease and removes the snapshot
// on every path. A VM powered back on while the job runs fails it. A
// dropped connection is retried for Options.RetryBudget (retry.go): the
// driver logs in again, takes a new export and resumes each download at
// the byte where it broke.
//
// A warm job copies the VM while it runs, in rounds (precopy.go): each
// round takes a snapshot, asks changed-block tracking which areas changed
// since the previous round's change id (every allocated area in the
// first), reads only those from the snapshot's frozen base disk by byte
// ranges through the datastore's HTTP access (no VDDK), and removes the
// snapshot on every path. Tracking that is off is turned on only with the
// job's consent (CBTConsentOption). StopSource shuts the guest down for
// the cutover; EndWarm cleans up whatever the outcome (warm.go).
//
// Disks are named by their virtual device key in decimal ("2000" for the
// first SCSI disk, "3000" for IDE, "16000" for SATA, "31000" for NVMe): the
// key is stable for the life of the disk, unique within the VM and safe in
// file and volume names. It is SourceDisk.target in the inventory and
// TargetDisk.source_disk in jobs; the label ("Hard disk 1") is only shown.
//
// Every connection, SOAP and NFC, leaves from Config.Dialer (bound to the
// migration CIDR by the driver) and is checked by one TLS policy: system
// roots, a given CA, or a pinned certificate thumbprint.
package vmware

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/ferry-v2v/ferry/pkg/seal"
)

// Defaults of Config.
const (
	DefaultPort            = 443
	DefaultHTTPPort        = 80
	DefaultShutdownTimeout = 10 * time.Minute
)

// SnapshotPrefix starts the name of every snapshot the driver takes;
// snapshots left by a crashed agent are removed before the next export.
const SnapshotPrefix = "ferry-export-"

// ContextDialer opens TCP connections; *net.Dialer from pkg/netsel binds
// them to the migration CIDR.
type ContextDialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// Config says how to reach one vCenter or ESXi host and how long to wait
// for what.
type Config struct {
	// Address is the host name or IP address of the vCenter or ESXi host.
	Address string
	// Port is DefaultPort for HTTPS, DefaultHTTPPort for HTTP when 0.
	Port int
	// User logs in, with its domain (administrator@vsphere.local).
	User     string
	Password seal.Secret
	// UseHTTP talks plain HTTP (testing, or behind a TLS proxy).
	UseHTTP bool

	// TLS: the server's certificate is verified against the system roots
	// unless CACertificatePEM gives the CAs to trust, or Thumbprint pins
	// the certificate itself (SHA-1 or SHA-256, hex, colons optional).
	// SkipHostnameCheck verifies the chain but not the name in it.
	CACertificatePEM  string
	Thumbprint        string
	SkipHostnameCheck bool

	// Dialer opens every TCP connection (a plain net.Dialer when nil).
	Dialer ContextDialer
	// Logger receives the driver's logs (slog.Default() when nil).
	Logger *slog.Logger

	// ShutdownTimeout is how long a guest shutdown may take before the VM
	// is powered off (DefaultShutdownTimeout when 0).
	ShutdownTimeout time.Duration
	// LeaseUpdateInterval is how often the export lease is told the
	// progress; 0 means a fifth of the lease's timeout, at most a minute.
	LeaseUpdateInterval time.Duration
}

// Errors of this package; errors that wrap them carry the details.
var (
	// ErrConfig reports an unusable Config.
	ErrConfig = errors.New("vmware source configuration")
	// ErrVersion reports a vCenter or ESXi host too old to migrate from.
	ErrVersion = errors.New("source version too old")
	// ErrNoVM reports a VM the source does not have.
	ErrNoVM = errors.New("no such VM")
	// ErrPrecheck reports a VM that cannot be migrated as it is.
	ErrPrecheck = errors.New("pre-check failed")
	// ErrPoweredOn fails a job whose source VM was powered on again.
	ErrPoweredOn = errors.New("source VM was powered on during the migration")
	// ErrExport reports an export the source or its lease broke.
	ErrExport = errors.New("export")
)

// withDefaults returns a copy of c with the defaults filled in.
func (c Config) withDefaults() Config {
	if c.Port == 0 {
		c.Port = DefaultPort
		if c.UseHTTP {
			c.Port = DefaultHTTPPort
		}
	}
	if c.Dialer == nil {
		c.Dialer = &net.Dialer{}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	return c
}

// Validate checks the configuration; the error names the field to fix.
func (c Config) Validate() error {
	var errs []error
	if c.Address == "" || strings.ContainsAny(c.Address, " /?#@") {
		errs = append(errs, fmt.Errorf("%w: address %q must be a host name or IP address", ErrConfig, c.Address))
	}
	if c.Port < 0 || c.Port > 65535 {
		errs = append(errs, fmt.Errorf("%w: port %d is out of range", ErrConfig, c.Port))
	}
	if c.User == "" {
		errs = append(errs, fmt.Errorf("%w: a user is required", ErrConfig))
	}
	if c.Password.IsZero() {
		errs = append(errs, fmt.Errorf("%w: a password is required", ErrConfig))
	}
	if c.Thumbprint != "" {
		if _, err := parseThumbprint(c.Thumbprint); err != nil {
			errs = append(errs, fmt.Errorf("%w: thumbprint: %w", ErrConfig, err))
		}
	}
	if c.CACertificatePEM != "" {
		if _, err := certPool(c.CACertificatePEM); err != nil {
			errs = append(errs, fmt.Errorf("%w: CA certificate: %w", ErrConfig, err))
		}
	}
	if c.UseHTTP && (c.Thumbprint != "" || c.CACertificatePEM != "" || c.SkipHostnameCheck) {
		errs = append(errs, fmt.Errorf("%w: TLS settings given with plain HTTP", ErrConfig))
	}
	return errors.Join(errs...)
}

// hostPort is the server's address, also used to name the source in errors.
func (c Config) hostPort() string {
	return net.JoinHostPort(c.Address, fmt.Sprint(c.Port))
}
