package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestTableEscapesControlCharacters: a host name or reason holding an
// ANSI escape or a newline is printed escaped, on one row.
func TestTableEscapesControlCharacters(t *testing.T) {
	var out bytes.Buffer
	tb := newTable(&out, "NAME", "REASON")
	tb.row("hosts/kvm\x1b[2J", "line1\nline2\tx")
	if err := tb.flush(); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	if strings.ContainsAny(got, "\x1b\t") || strings.Count(got, "\n") != 2 {
		t.Fatalf("table holds raw control characters: %q", got)
	}
	for _, want := range []string{`hosts/kvm\x1b[2J`, `line1\nline2\tx`} {
		if !strings.Contains(got, want) {
			t.Errorf("table %q lacks %q", got, want)
		}
	}
	out.Reset()
	if err := printDetails(&out, []field{{"Reason", "a\x1b[31mb\nsecond"}}); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), "\x1b") || !strings.Contains(out.String(), `a\x1b[31mb`) {
		t.Fatalf("details: %q", out.String())
	}
}
