//go:build integration

package testenv

import (
	"fmt"
	"testing"
)

// TestSubnet172: subnets held at once differ, one of them in use by the
// veth of the test.
func TestSubnet172(t *testing.T) {
	RequireRoot(t)
	a := Subnet172(t)
	Veth(t, nil, "fsub0r", fmt.Sprintf("172.%d.9.1/24", a), nil, "fsub0h", fmt.Sprintf("172.%d.9.2/24", a))
	seen := map[int]bool{a: true}
	for range 3 {
		n := Subnet172(t)
		if n < 16 || n > 31 || seen[n] {
			t.Fatalf("Subnet172 = %d after %v; want a new one from 16 to 31", n, seen)
		}
		seen[n] = true
	}
}
