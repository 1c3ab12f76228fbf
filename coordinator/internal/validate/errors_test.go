package validate

import (
	"strings"
	"testing"
)

func TestClip(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{strings.Repeat("a", 128), strings.Repeat("a", 128)},
		{strings.Repeat("a", 129), strings.Repeat("a", 128) + "…"},
		{"a" + strings.Repeat("€", 50), "a" + strings.Repeat("€", 42) + "…"}, // '€' is 3 bytes: 1+42*3 = 127
	} {
		if got := Clip(tc.in); got != tc.want {
			t.Errorf("Clip(%d bytes) = %q, want %q", len(tc.in), got, tc.want)
		}
	}
	if got := Sprintf("%s: %q %5.2f %% %q", strings.Repeat("s", 200), strings.Repeat("q", 200), 1.5, "ok"); got !=
		strings.Repeat("s", 200)+": \""+strings.Repeat("q", 128)+"…\"  1.50 % \"ok\"" {
		t.Errorf("Sprintf clipped the wrong arguments: %q", got)
	}
}
