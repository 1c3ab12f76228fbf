package bandwidth

import (
	"errors"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in        string
		bps       int64
		canonical string
		err       error
	}{
		{"8Kbps", 8_000, "8Kbps", nil},
		{"8kbps", 8_000, "8Kbps", nil},
		{"100Mbps", 100_000_000, "100Mbps", nil},
		{"100mbps", 100_000_000, "100Mbps", nil},
		{"1000Kbps", 1_000_000, "1Mbps", nil},
		{"1500Kbps", 1_500_000, "1500Kbps", nil},
		{"2000Mbps", 2_000_000_000, "2Gbps", nil},
		{"32Gbps", 32_000_000_000, "32Gbps", nil},
		{"32gbps", 32_000_000_000, "32Gbps", nil},
		{"32000Mbps", 32_000_000_000, "32Gbps", nil},
		{"32000000Kbps", 32_000_000_000, "32Gbps", nil},
		{"0010Mbps", 10_000_000, "10Mbps", nil},
		{"1Gbps", 1_000_000_000, "1Gbps", nil},

		{"7Kbps", 0, "", ErrRange},
		{"0Mbps", 0, "", ErrRange},
		{"33Gbps", 0, "", ErrRange},
		{"32001Mbps", 0, "", ErrRange},
		{"32000001Kbps", 0, "", ErrRange},
		{"-5Mbps", 0, "", ErrRange},
		{"99999999999999999999999Gbps", 0, "", ErrRange},
		{"9223372036854775807Kbps", 0, "", ErrRange},

		{"", 0, "", ErrSyntax},
		{"100", 0, "", ErrSyntax},
		{"Mbps", 0, "", ErrSyntax},
		{"-Mbps", 0, "", ErrSyntax},
		{"100 Mbps", 0, "", ErrSyntax},
		{" 100Mbps", 0, "", ErrSyntax},
		{"100Mbps ", 0, "", ErrSyntax},
		{"1.5Gbps", 0, "", ErrSyntax},
		{"+5Mbps", 0, "", ErrSyntax},
		{"100MBps", 0, "", ErrSyntax},
		{"100MBPS", 0, "", ErrSyntax},
		{"100bps", 0, "", ErrSyntax},
		{"100Tbps", 0, "", ErrSyntax},
		{"100M", 0, "", ErrSyntax},
		{"1e3Kbps", 0, "", ErrSyntax},
		{"0x10Mbps", 0, "", ErrSyntax},
		{"١٠Mbps", 0, "", ErrSyntax},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			bps, canonical, err := Parse(tt.in)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("Parse(%q) error = %v, want %v", tt.in, err, tt.err)
				}
				if !strings.Contains(err.Error(), tt.err.Error()) || !strings.Contains(err.Error(), `"`+tt.in+`"`) {
					t.Fatalf("Parse(%q) error text %q lacks the input or the rule", tt.in, err)
				}
				if bps != 0 || canonical != "" {
					t.Fatalf("Parse(%q) = %d, %q on error", tt.in, bps, canonical)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.in, err)
			}
			if bps != tt.bps || canonical != tt.canonical {
				t.Fatalf("Parse(%q) = %d, %q; want %d, %q", tt.in, bps, canonical, tt.bps, tt.canonical)
			}
		})
	}
}

func TestErrorText(t *testing.T) {
	_, _, err := Parse("fast")
	if got, want := err.Error(), `"fast" must be an integer followed by Kbps, Mbps or Gbps`; got != want {
		t.Errorf("syntax error = %q, want %q", got, want)
	}
	_, _, err = Parse("64Gbps")
	if got, want := err.Error(), `"64Gbps" must be between 8Kbps and 32Gbps`; got != want {
		t.Errorf("range error = %q, want %q", got, want)
	}
}

func TestFormat(t *testing.T) {
	tests := []struct {
		bps  int64
		want string
	}{
		{0, "0bps"},
		{1, "1bps"},
		{8_000, "8Kbps"},
		{1_000_000, "1Mbps"},
		{1_001_000, "1001Kbps"},
		{32_000_000_000, "32Gbps"},
		{-2_000_000, "-2Mbps"},
	}
	for _, tt := range tests {
		if got := Format(tt.bps); got != tt.want {
			t.Errorf("Format(%d) = %q, want %q", tt.bps, got, tt.want)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"8Kbps", "100mbps", "1000Kbps", "32Gbps", "33Gbps", "-1Gbps", "1.5Mbps", "", "9223372036854775807Gbps"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		bps, canonical, err := Parse(s)
		if err != nil {
			if !errors.Is(err, ErrSyntax) && !errors.Is(err, ErrRange) {
				t.Fatalf("Parse(%q) error %v wraps neither sentinel", s, err)
			}
			return
		}
		if bps < Min || bps > Max {
			t.Fatalf("Parse(%q) = %d, outside the limits", s, bps)
		}
		bps2, canonical2, err := Parse(canonical)
		if err != nil || bps2 != bps || canonical2 != canonical {
			t.Fatalf("canonical %q of %q does not round-trip: %d %q %v", canonical, s, bps2, canonical2, err)
		}
		if len(canonical) > len(s) {
			t.Fatalf("canonical %q is longer than %q", canonical, s)
		}
	})
}
