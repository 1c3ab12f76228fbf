// Package bandwidth parses the bandwidth limits of migration servers:
// an integer followed by a unit, "100Mbps", with 1K = 1000 and limits from
// 8 Kbps to 32 Gbps inclusive.
package bandwidth

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Limits in bits per second.
const (
	Min int64 = 8 * kilo
	Max int64 = 32 * giga
)

const (
	kilo = 1000
	mega = 1000 * kilo
	giga = 1000 * mega
)

var (
	// ErrSyntax reports a value that is not an integer followed by a unit.
	ErrSyntax = errors.New("must be an integer followed by Kbps, Mbps or Gbps")
	// ErrRange reports a value outside Min..Max.
	ErrRange = errors.New("must be between 8Kbps and 32Gbps")
)

type unit struct {
	name string
	bps  int64
}

// units from the largest down; Format picks the first that divides evenly.
var units = []unit{{"Gbps", giga}, {"Mbps", mega}, {"Kbps", kilo}}

var unitByName = map[string]int64{
	"Kbps": kilo, "kbps": kilo,
	"Mbps": mega, "mbps": mega,
	"Gbps": giga, "gbps": giga,
}

// Parse reads a limit such as "100Mbps" or "2gbps" and returns it in bits per
// second together with its canonical spelling, the largest unit that keeps
// the number an integer ("1000Kbps" gives 1000000 and "1Mbps"). Units are
// Kbps, Mbps and Gbps (or all lower case), with no space before them. Errors
// wrap ErrSyntax or ErrRange and quote the input.
func Parse(s string) (bitsPerSecond int64, canonical string, err error) {
	num, mult, ok := split(s)
	if !ok {
		return 0, "", fmt.Errorf("%q %w", s, ErrSyntax)
	}
	neg := strings.HasPrefix(num, "-")
	n, err := strconv.ParseUint(strings.TrimPrefix(num, "-"), 10, 64)
	if err != nil && !errors.Is(err, strconv.ErrRange) {
		return 0, "", fmt.Errorf("%q %w", s, ErrSyntax)
	}
	// err is now nil or an overflow; either way a value past Max/mult is out of range.
	if err != nil || neg || n > uint64(Max/mult) || int64(n)*mult < Min {
		return 0, "", fmt.Errorf("%q %w", s, ErrRange)
	}
	bps := int64(n) * mult
	return bps, Format(bps), nil
}

// split cuts s into its number (digits, optionally after a minus sign) and
// its unit's multiplier.
func split(s string) (num string, mult int64, ok bool) {
	if len(s) < 5 {
		return "", 0, false
	}
	num, name := s[:len(s)-4], s[len(s)-4:]
	mult, ok = unitByName[name]
	if !ok {
		return "", 0, false
	}
	digits := strings.TrimPrefix(num, "-")
	if digits == "" || strings.TrimLeft(digits, "0123456789") != "" {
		return "", 0, false
	}
	return num, mult, true
}

// Format spells a rate in bits per second with the largest unit that keeps
// the number an integer: 1500000 is "1500Kbps", 2000000000 is "2Gbps". A rate
// that is not a whole number of Kbps is spelled in bps.
func Format(bitsPerSecond int64) string {
	if bitsPerSecond != 0 {
		for _, u := range units {
			if bitsPerSecond%u.bps == 0 {
				return strconv.FormatInt(bitsPerSecond/u.bps, 10) + u.name
			}
		}
	}
	return strconv.FormatInt(bitsPerSecond, 10) + "bps"
}
