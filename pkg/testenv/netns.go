package testenv

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
)

// NetNS is a network namespace made for one test ("ip netns add"), with
// its loopback up. It and its veth pairs are deleted when the test ends.
// The root namespace is the nil *NetNS.
type NetNS struct {
	Name string
}

// NewNetNS makes the namespace name (unique per test: at most 15
// characters of [a-z0-9-] are safest).
func NewNetNS(t testing.TB, name string) *NetNS {
	t.Helper()
	RequireRoot(t)
	ip := LookPath(t, "ip")
	if _, err := run(context.Background(), nil, ip, "netns", "add", name); err != nil {
		Unavailable(t, "network namespaces: %v", err)
	}
	ns := &NetNS{Name: name}
	t.Cleanup(func() { _, _ = run(context.Background(), nil, ip, "netns", "delete", name) })
	ns.IP(t, "link", "set", "lo", "up")
	return ns
}

// Command returns the argument list that runs argv inside ns ("ip netns
// exec NAME argv..."), or argv itself in the root namespace.
func (ns *NetNS) Command(argv ...string) []string {
	if ns == nil {
		return argv
	}
	return append([]string{"ip", "netns", "exec", ns.Name}, argv...)
}

// Run runs a program inside ns and returns its standard output.
func (ns *NetNS) Run(t testing.TB, argv ...string) string {
	t.Helper()
	cmd := ns.Command(argv...)
	return Run(t, cmd[0], cmd[1:]...)
}

// IP runs "ip ARGS" inside ns.
func (ns *NetNS) IP(t testing.TB, args ...string) string {
	t.Helper()
	return ns.Run(t, append([]string{"ip"}, args...)...)
}

// TryIP runs "ip ARGS" inside ns and returns its error.
func (ns *NetNS) TryIP(args ...string) error {
	cmd := ns.Command(append([]string{"ip"}, args...)...)
	_, err := run(context.Background(), nil, cmd[0], cmd[1:]...)
	return err
}

// Veth links a and b (either may be the root namespace, nil) with a veth
// pair: device aDev with address aAddr (CIDR form, e.g. 10.1.2.1/24) in a,
// bDev with bAddr in b, both up. The pair is deleted when the test ends.
func Veth(t testing.TB, a *NetNS, aDev, aAddr string, b *NetNS, bDev, bAddr string) {
	t.Helper()
	var root *NetNS
	root.IP(t, "link", "add", aDev, "type", "veth", "peer", "name", bDev)
	t.Cleanup(func() {
		// Deleting either end deletes the pair; a's end may have moved.
		_ = a.TryIP("link", "delete", aDev)
		_ = root.TryIP("link", "delete", aDev)
	})
	for _, end := range []struct {
		ns        *NetNS
		dev, addr string
	}{{a, aDev, aAddr}, {b, bDev, bAddr}} {
		if end.ns != nil {
			root.IP(t, "link", "set", end.dev, "netns", end.ns.Name)
		}
		end.ns.IP(t, "addr", "add", end.addr, "dev", end.dev)
		end.ns.IP(t, "link", "set", end.dev, "up")
	}
}

// Counters are a network interface's byte counters.
type Counters struct{ RX, TX int64 }

// Total is RX + TX.
func (c Counters) Total() int64 { return c.RX + c.TX }

// Sub is c − o.
func (c Counters) Sub(o Counters) Counters { return Counters{c.RX - o.RX, c.TX - o.TX} }

// Bytes reads dev's /sys/class/net/DEV/statistics counters inside ns.
func (ns *NetNS) Bytes(t testing.TB, dev string) Counters {
	t.Helper()
	dir := "/sys/class/net/" + dev + "/statistics/"
	out := ns.Run(t, "cat", dir+"rx_bytes", dir+"tx_bytes")
	f := strings.Fields(out)
	if len(f) != 2 {
		t.Fatalf("counters of %s: %q", dev, out)
	}
	rx, err1 := strconv.ParseInt(f[0], 10, 64)
	tx, err2 := strconv.ParseInt(f[1], 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("counters of %s: %q", dev, out)
	}
	return Counters{rx, tx}
}

// String names the namespace ("root" for nil).
func (ns *NetNS) String() string {
	if ns == nil {
		return "root"
	}
	return fmt.Sprintf("netns %s", ns.Name)
}
