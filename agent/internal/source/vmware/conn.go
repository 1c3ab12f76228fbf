package vmware

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/session"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// closeTimeout bounds the logout when a connection closes.
const closeTimeout = 10 * time.Second

// MinVersion is the oldest vCenter or ESXi the driver accepts: 5.0 brought
// the NFC export of snapshots and the API this driver calls.
var MinVersion = Version{5, 0}

// Version is a vSphere product version, major.minor.
type Version struct{ Major, Minor int }

func (v Version) String() string { return fmt.Sprintf("%d.%d", v.Major, v.Minor) }

// Less reports whether v is older than w.
func (v Version) Less(w Version) bool {
	return v.Major < w.Major || v.Major == w.Major && v.Minor < w.Minor
}

// ParseVersion reads "6.7.0", "8.0.2.0" or "5.5".
func ParseVersion(s string) (Version, error) {
	parts := strings.SplitN(strings.TrimSpace(s), ".", 3)
	if len(parts) < 2 {
		return Version{}, fmt.Errorf("version %q is not major.minor", s)
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(parts[1])
	if err1 != nil || err2 != nil {
		return Version{}, fmt.Errorf("version %q is not major.minor", s)
	}
	return Version{major, minor}, nil
}

// checkVersion refuses a product older than MinVersion.
func checkVersion(what, version string) error {
	v, err := ParseVersion(version)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrVersion, what, err)
	}
	if v.Less(MinVersion) {
		return fmt.Errorf("%w: %s is version %s; vCenter and ESXi %s or newer are needed",
			ErrVersion, what, version, MinVersion)
	}
	return nil
}

// Conn is a logged-in session with a vCenter or ESXi host.
type Conn struct {
	cfg   Config
	log   *slog.Logger
	trust *trust
	soap  *soap.Client
	vim   *vim25.Client
	sm    *session.Manager
	// resume, set on an export's connection, makes its downloads resume
	// after the connection drops.
	resume *exportSource

	closeOnce sync.Once
	closeErr  error
}

// Connect checks the server's certificate, reads what the server is,
// refuses versions older than MinVersion and logs in.
func Connect(ctx context.Context, cfg Config) (*Conn, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	tr, err := newTrust(cfg)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	u := &url.URL{Scheme: "https", Host: cfg.hostPort(), Path: vim25.Path}
	if cfg.UseHTTP {
		u.Scheme = "http"
	}
	sc := soap.NewClient(u, false)
	tr.configure(sc.DefaultTransport(), cfg.Dialer)
	log := cfg.Logger.With("component", "vmware-source", "source", cfg.hostPort())
	vc, err := vim25.NewClient(ctx, sc)
	if err != nil {
		sc.CloseIdleConnections()
		return nil, fmt.Errorf("connect to %s: %w", cfg.hostPort(), err)
	}
	c := &Conn{cfg: cfg, log: log, trust: tr, soap: sc, vim: vc, sm: session.NewManager(vc)}
	about := c.About()
	if err := checkVersion(fmt.Sprintf("%s (%s)", cfg.hostPort(), about.FullName), about.Version); err != nil {
		sc.CloseIdleConnections()
		return nil, err
	}
	if err := c.sm.Login(ctx, url.UserPassword(cfg.User, cfg.Password.Reveal())); err != nil {
		sc.CloseIdleConnections()
		return nil, fmt.Errorf("log in to %s as %s: %w", cfg.hostPort(), cfg.User, err)
	}
	log.Info("connected to the source", "product", about.FullName, "version", about.Version,
		"build", about.Build, "api_type", about.ApiType, "user", cfg.User)
	return c, nil
}

// About describes the server: product, version, build, and API type
// ("VirtualCenter" or "HostAgent").
func (c *Conn) About() types.AboutInfo { return c.vim.ServiceContent.About }

// IsVCenter reports whether the server is a vCenter rather than an ESXi
// host.
func (c *Conn) IsVCenter() bool { return c.vim.IsVC() }

// Close logs out. Later calls return the first result.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
		defer cancel()
		c.closeErr = c.sm.Logout(ctx)
		c.soap.CloseIdleConnections()
	})
	return c.closeErr
}
