package seal

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

const secretValue = "correct-horse-battery-staple"

func TestSecretLogRedaction(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, nil))
	s := Secret(secretValue)
	log.Info("connect", "password", s, slog.Any("any", s), slog.Group("source", "cred", s))
	log.With("ctx", s).Info("with")

	out := buf.String()
	if strings.Contains(out, secretValue) {
		t.Fatalf("log output leaks the secret: %s", out)
	}
	var rec map[string]any
	first, _, _ := strings.Cut(out, "\n")
	if err := json.Unmarshal([]byte(first), &rec); err != nil {
		t.Fatalf("log output is not JSON: %v: %s", err, out)
	}
	if rec["password"] != Redacted || rec["any"] != Redacted {
		t.Fatalf("password=%v any=%v, want %q", rec["password"], rec["any"], Redacted)
	}
	if g, _ := rec["source"].(map[string]any); g["cred"] != Redacted {
		t.Fatalf("source.cred = %v, want %q", rec["source"], Redacted)
	}
	if n := strings.Count(out, Redacted); n != 4 {
		t.Fatalf("found %d REDACTED markers, want 4: %s", n, out)
	}
}

func TestSecretFormatRedaction(t *testing.T) {
	s := Secret(secretValue)
	type holder struct {
		User     string
		Password Secret
	}
	h := holder{User: "root", Password: s}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%10s", "%-8v", "%d"} {
		for _, arg := range []any{s, h, &h, []Secret{s}, map[string]Secret{"k": s}} {
			out := fmt.Sprintf(verb, arg)
			if strings.Contains(out, secretValue) || strings.Contains(out, fmt.Sprintf("%x", secretValue)) {
				t.Errorf("Sprintf(%q, %T) leaks the secret: %s", verb, arg, out)
			}
		}
	}
	if got := s.String(); got != Redacted {
		t.Errorf("String() = %q", got)
	}
	if got := s.GoString(); got != Redacted {
		t.Errorf("GoString() = %q", got)
	}
	if got := fmt.Sprint(s); got != Redacted {
		t.Errorf("Sprint = %q", got)
	}
	if got := fmt.Sprintf("%q", s); got != `"REDACTED"` {
		t.Errorf(`Sprintf("%%q") = %s`, got)
	}
	if b, _ := json.Marshal(h); strings.Contains(string(b), secretValue) {
		t.Errorf("json.Marshal leaks the secret: %s", b)
	}
	if s.Reveal() != secretValue {
		t.Errorf("Reveal() = %q", s.Reveal())
	}
}
