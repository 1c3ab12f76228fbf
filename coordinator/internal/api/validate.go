package api

import (
	"errors"
	"net"
	"net/netip"
	"path"
	"strconv"
	"strings"
	"unicode"

	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/ferry-v2v/ferry/coordinator/internal/validate"
	"github.com/ferry-v2v/ferry/pkg/bandwidth"
)

const (
	maxDisplayName = validate.MaxDisplayName
	maxLabel       = 256
	maxPath        = 4096 // PATH_MAX
)

// checkEnum refuses values the enum does not define and, when required,
// the _UNSPECIFIED zero value.
func checkEnum(c *checker, field string, e protoreflect.Enum, required bool) {
	validate.Enum(&c.Checker, field, e, required)
}

// checkText refuses over-long or control characters in a free-text field.
func checkText(c *checker, field, s string, limit int) { validate.Text(&c.Checker, field, s, limit) }

// checkAbsPath requires an absolute, clean path.
func checkAbsPath(c *checker, field, p, what string) {
	switch {
	case p == "":
		c.add(field, "required: the absolute path of %s", what)
	case len(p) > maxPath:
		c.add(field, "at most %d bytes, got %d", maxPath, len(p))
	case strings.IndexFunc(p, unicode.IsControl) >= 0:
		c.add(field, "must not contain control characters")
	case !path.IsAbs(p):
		c.add(field, "%q is relative; give the absolute path of %s", p, what)
	case path.Clean(p) != p:
		c.add(field, "%q is not clean; did you mean %q?", p, path.Clean(p))
	}
}

// checkHostname requires a DNS name or an IP address, without a port or
// scheme.
func checkHostname(c *checker, field, s string) {
	if s == "" {
		c.add(field, "required: a host name or IP address")
		return
	}
	if _, err := netip.ParseAddr(s); err == nil {
		return
	}
	for _, label := range strings.Split(strings.TrimSuffix(s, "."), ".") {
		if label == "" || len(label) > 63 || strings.Trim(label, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-") != "" ||
			strings.HasPrefix(label, "-") || strings.HasSuffix(label, "-") {
			c.add(field, "%q is not a host name or IP address (give no scheme or port)", s)
			return
		}
	}
}

// checkPort requires 0 (the default) or a TCP port.
func checkPort(c *checker, field string, port int32) {
	if port < 0 || port > 65535 {
		c.add(field, "%d is not a TCP port (1-65535, or 0 for the default)", port)
	}
}

// checkHostPort requires host:port with a numeric port.
func checkHostPort(c *checker, field, s string) {
	host, port, err := net.SplitHostPort(s)
	if s == "" {
		c.add(field, "required: host:port")
		return
	}
	if err != nil || host == "" {
		c.add(field, "%q is not host:port", s)
		return
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		c.add(field, "%q has no valid port", s)
	}
}

// parseIP parses an address and refuses zones and IPv4-mapped IPv6.
func parseIP(s string) (netip.Addr, bool) { return validate.ParseIP(s) }

// bandwidthLimit parses an optional limit; "" is unlimited.
func bandwidthLimit(c *checker, field, s string) (bps int64, canonical string) {
	if s == "" {
		return 0, ""
	}
	bps, canonical, err := bandwidth.Parse(s)
	if err != nil {
		why := bandwidth.ErrSyntax // the error quotes s whole; quote it clipped
		if errors.Is(err, bandwidth.ErrRange) {
			why = bandwidth.ErrRange
		}
		c.add(field, "%q %v (e.g. 500Mbps; empty for unlimited)", s, why)
	}
	return bps, canonical
}
