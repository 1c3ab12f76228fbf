package validate

import (
	"net"
	"net/netip"
	"regexp"
	"strings"
	"unicode"

	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/ferry-v2v/ferry/pkg/hostname"
)

// Collections of resource names, as in "migrationJobs/{id}".
const (
	Clusters    = "clusters"
	Hosts       = "hosts"
	Storages    = "primaryStorages"
	Networks    = "l3Networks"
	Servers     = "migrationServers"
	Sources     = "sources"
	Credentials = "credentials"
	Jobs        = "migrationJobs"
	Mappings    = "networkMappingGroups"
)

// Limits of free-text fields and request IDs.
const (
	MaxDisplayName = 256
	MaxRequestID   = 128
)

// idPattern is what a caller may choose as a resource ID.
var idPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// WellFormed says whether name is collection/{id} with a valid id.
func WellFormed(name, collection string) bool {
	id, ok := strings.CutPrefix(name, collection+"/")
	if !ok {
		return false
	}
	if collection == Hosts {
		return hostname.Validate(id) == nil
	}
	return idPattern.MatchString(id)
}

// Ref checks that a required reference field is collection/{id}.
func Ref(c *Checker, field, value, collection string) {
	switch {
	case value == "":
		c.Add(field, "required: a %s/{id} name", collection)
	case !WellFormed(value, collection):
		c.Add(field, "%q is not a %s/{id} name", value, collection)
	}
}

// OptionalRef is Ref for a field that may be empty.
func OptionalRef(c *Checker, field, value, collection string) {
	if value != "" {
		Ref(c, field, value, collection)
	}
}

// RequestID checks the length of a request_id.
func RequestID(c *Checker, id string) {
	if len(id) > MaxRequestID {
		c.Add("request_id", "at most %d characters, got %d", MaxRequestID, len(id))
	}
}

// Enum refuses values the enum does not define and, when required, the
// _UNSPECIFIED zero value.
func Enum(c *Checker, field string, e protoreflect.Enum, required bool) {
	n := e.Number()
	switch {
	case e.Descriptor().Values().ByNumber(n) == nil:
		c.Add(field, "%d is not a value of %s", n, e.Descriptor().Name())
	case required && n == 0:
		c.Add(field, "required: one of %s", enumChoices(e.Descriptor()))
	}
}

func enumChoices(d protoreflect.EnumDescriptor) string {
	var names []string
	for i := 1; i < d.Values().Len(); i++ {
		names = append(names, string(d.Values().Get(i).Name()))
	}
	return strings.Join(names, ", ")
}

// Text refuses over-long or control characters in a free-text field.
func Text(c *Checker, field, s string, limit int) {
	if len(s) > limit {
		c.Add(field, "at most %d bytes, got %d", limit, len(s))
		return
	}
	if strings.IndexFunc(s, unicode.IsControl) >= 0 {
		c.Add(field, "must not contain control characters")
	}
}

// ParseIP parses an address and refuses zones and IPv4-mapped IPv6.
func ParseIP(s string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" || a.Is4In6() {
		return netip.Addr{}, false
	}
	return a, true
}

// ParseMAC returns a unicast 48-bit MAC in lower-case colon form, or why
// s is not one.
func ParseMAC(s string) (mac, why string) {
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return "", "is not a 48-bit MAC address like 52:54:00:12:34:56"
	}
	if hw[0]&1 == 1 {
		return "", "is a multicast address; a NIC needs a unicast MAC"
	}
	return hw.String(), ""
}

// MaxDescription is the longest free-text description, in bytes.
const MaxDescription = 1024

// Description refuses an over-long description or control characters
// other than line breaks and tabs.
func Description(c *Checker, field, s string) {
	if len(s) > MaxDescription {
		c.Add(field, "at most %d bytes, got %d", MaxDescription, len(s))
		return
	}
	if strings.IndexFunc(s, func(r rune) bool { return unicode.IsControl(r) && r != '\n' && r != '\t' }) >= 0 {
		c.Add(field, "must not contain control characters other than line breaks and tabs")
	}
}
