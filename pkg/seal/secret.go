package seal

import (
	"fmt"
	"log/slog"
)

// Redacted is what a Secret prints in place of its value.
const Redacted = "REDACTED"

// Secret is a string that never shows its value in logs or formatted output:
// slog, fmt's verbs (%v %s %q %x %#v ...) and String all print "REDACTED".
// Use Reveal where the value is really needed.
type Secret string

// Reveal returns the secret value.
func (s Secret) Reveal() string { return string(s) }

// IsZero reports whether the secret is empty.
func (s Secret) IsZero() bool { return s == "" }

// LogValue implements slog.LogValuer.
func (Secret) LogValue() slog.Value { return slog.StringValue(Redacted) }

// String implements fmt.Stringer.
func (Secret) String() string { return Redacted }

// GoString implements fmt.GoStringer.
func (Secret) GoString() string { return Redacted }

// Format implements fmt.Formatter so that no verb reaches the raw string.
func (Secret) Format(f fmt.State, verb rune) {
	if verb == 'q' {
		fmt.Fprintf(f, "%q", Redacted)
		return
	}
	fmt.Fprint(f, Redacted)
}

// MarshalText keeps encoders (JSON, YAML, text) from writing the value.
func (Secret) MarshalText() ([]byte, error) { return []byte(Redacted), nil }
