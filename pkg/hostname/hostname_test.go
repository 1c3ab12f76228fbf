package hostname

import (
	"errors"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	good := []string{"kvm-1", "KVM1", "a", "kvm-1.rack2.example.com", strings.Repeat("a", 63), strings.Repeat(strings.Repeat("a", 62)+".", 4) + "a"}
	for _, n := range good {
		if err := Validate(n); err != nil {
			t.Errorf("Validate(%q) = %v, want nil", n, err)
		}
	}
	bad := map[string]string{
		"":                         "empty",
		"../etc":                   "empty label",
		"a/b":                      `'/'`,
		"kvm\x1b[31m":              `'\x1b'`,
		"kvm 1":                    `' '`,
		"-kvm":                     "starts or ends",
		"kvm.":                     "empty label",
		strings.Repeat("a", 64):    "at most 63",
		strings.Repeat("a.", 127):  "at most 253", // 254 bytes
		"kvm_1":                    `'_'`,
		"h\u00e9":                  "is not a letter",
		strings.Repeat("x", 4<<20): "at most 253",
	}
	for n, want := range bad {
		err := Validate(n)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate(%.40q) = %v, want ErrInvalid with %q", n, err, want)
		}
		if strings.ContainsAny(err.Error(), "\x1b\n") {
			t.Errorf("error of %.40q holds a control character: %q", n, err)
		}
	}
}

func TestEscape(t *testing.T) {
	for in, want := range map[string]string{
		"plain name é":        "plain name é",
		"red\x1b[31m":         `red\x1b[31m`,
		"a\nb\tc":             `a\nb\tc`,
		"back\\slash":         `back\\slash`,
		"bad\xffbyte":         `bad\xffbyte`,
		"line\u2028sep\u0085": `line\u2028sep\u0085`,
	} {
		if got := Escape(in); got != want {
			t.Errorf("Escape(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestValidateText(t *testing.T) {
	if err := ValidateText("alice ops", 64); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"a\x1b", "a\n", "\xff", strings.Repeat("a", 65)} {
		if ValidateText(s, 64) == nil {
			t.Errorf("ValidateText(%q) = nil", s)
		}
	}
}
