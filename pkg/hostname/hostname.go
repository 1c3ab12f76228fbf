// Package hostname checks the names that identify target hosts, and any
// short text that reaches an operator's terminal, before they are stored.
//
// A host name follows the DNS rules (RFC 1123): at most 253 bytes, labels
// of 1 to 63 letters, digits and hyphens separated by dots, no label
// starting or ending with a hyphen. So it never holds "/", "..", spaces,
// control characters or escape sequences.
package hostname

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxLength is the longest host name, in bytes.
const MaxLength = 253

// ErrInvalid reports a name that is not a valid host name.
var ErrInvalid = errors.New("invalid host name")

// Validate reports why name is not a valid host name, or nil.
func Validate(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty", ErrInvalid)
	case len(name) > MaxLength:
		return fmt.Errorf("%w: %d bytes, at most %d", ErrInvalid, len(name), MaxLength)
	}
	for _, label := range strings.Split(name, ".") {
		if err := validLabel(label); err != nil {
			return fmt.Errorf("%w \"%s\": %v", ErrInvalid, Quote(name), err)
		}
	}
	return nil
}

func validLabel(l string) error {
	switch {
	case l == "":
		return errors.New("empty label")
	case len(l) > 63:
		return fmt.Errorf("label of %d bytes, at most 63", len(l))
	case l[0] == '-' || l[len(l)-1] == '-':
		return errors.New("a label starts or ends with '-'")
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("character %q is not a letter, digit or '-'", rune(c))
		}
	}
	return nil
}

// ValidateText reports why s is not short printable text: valid UTF-8, at
// most max bytes, no control characters (so no terminal escape sequences).
func ValidateText(s string, max int) error {
	if len(s) > max {
		return fmt.Errorf("%d bytes, at most %d", len(s), max)
	}
	if !utf8.ValidString(s) {
		return errors.New("not valid UTF-8")
	}
	for _, r := range s {
		if unicode.IsControl(r) || r == '\u2028' || r == '\u2029' {
			return fmt.Errorf("control character %U", r)
		}
	}
	return nil
}

// Quote returns s with control characters, invalid UTF-8 and backslashes
// escaped, so it can be printed to a terminal as it is, and cut to 80
// bytes; for error messages about names that failed validation.
func Quote(s string) string {
	cut := len(s) > 80
	if cut {
		s = s[:80]
	}
	q := Escape(s)
	if cut {
		q += "..."
	}
	return q
}

// Escape returns s with every control character, invalid byte and
// backslash written as a Go escape (\x1b, \n, \u2028, \\); printable text
// is kept as it is.
func Escape(s string) string {
	clean := true
	for _, r := range s {
		if r == utf8.RuneError || r == '\\' || unicode.IsControl(r) || r == '\u2028' || r == '\u2029' {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n <= 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\\':
			b.WriteString(`\\`)
		case unicode.IsControl(r) || r == '\u2028' || r == '\u2029':
			q := fmt.Sprintf("%+q", string(r))
			b.WriteString(q[1 : len(q)-1])
		default:
			b.WriteRune(r)
		}
		i += n
	}
	return b.String()
}
