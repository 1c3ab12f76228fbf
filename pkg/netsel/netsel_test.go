package netsel

import (
	"errors"
	"net"
	"net/netip"
	"testing"
)

func TestLocalAddrIn(t *testing.T) {
	tests := []struct {
		cidr    string
		want    string
		wantErr error
	}{
		{cidr: "127.0.0.0/8", want: "127.0.0.1"},
		{cidr: "127.0.0.1/32", want: "127.0.0.1"},
		{cidr: "127.0.0.7/8", want: "127.0.0.1"}, // host bits are ignored
		{cidr: unusedCIDR(t), wantErr: ErrNoAddress},
	}
	for _, tt := range tests {
		t.Run(tt.cidr, func(t *testing.T) {
			ip, err := LocalAddrIn(tt.cidr)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("LocalAddrIn(%q) = %v, %v; want error %v", tt.cidr, ip, err, tt.wantErr)
				}
				return
			}
			if err != nil || !ip.Equal(net.ParseIP(tt.want)) {
				t.Fatalf("LocalAddrIn(%q) = %v, %v; want %s", tt.cidr, ip, err, tt.want)
			}
		})
	}
}

// TestLocalAddrInEveryAddress finds each address of this host from its own
// single-address prefix.
func TestLocalAddrInEveryAddress(t *testing.T) {
	for _, a := range upAddrs(t) {
		prefix := netip.PrefixFrom(a, a.BitLen())
		ip, err := LocalAddrIn(prefix.String())
		if err != nil || !ip.Equal(net.IP(a.AsSlice())) {
			t.Errorf("LocalAddrIn(%s) = %v, %v; want %s", prefix, ip, err, a)
		}
	}
}

// upAddrs lists the addresses of this host's interfaces that are up.
func upAddrs(t *testing.T) []netip.Addr {
	t.Helper()
	ifaces, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	var out []netip.Addr
	for _, ifc := range ifaces {
		if ifc.Flags&net.FlagUp == 0 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				if addr, ok := netip.AddrFromSlice(n.IP); ok {
					out = append(out, addr.Unmap())
				}
			}
		}
	}
	return out
}

// unusedCIDR returns a documentation prefix that holds none of this host's
// addresses (test machines do use some of them).
func unusedCIDR(t *testing.T) string {
	t.Helper()
	addrs := upAddrs(t)
	for _, cidr := range []string{"192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"} {
		prefix := netip.MustParsePrefix(cidr)
		used := false
		for _, a := range addrs {
			used = used || prefix.Contains(a)
		}
		if !used {
			return cidr
		}
	}
	t.Fatal("every documentation prefix is in use on this host")
	return ""
}

func TestLocalAddrInBadCIDR(t *testing.T) {
	for _, cidr := range []string{"", "127.0.0.1", "10.0.0.0/33", "nonsense/8"} {
		if ip, err := LocalAddrIn(cidr); err == nil {
			t.Errorf("LocalAddrIn(%q) = %v; want a parse error", cidr, ip)
		}
	}
}

func TestAddrIn(t *testing.T) {
	addrs := []net.Addr{
		&net.IPNet{IP: net.ParseIP("10.1.2.3"), Mask: net.CIDRMask(16, 32)},
		&net.IPAddr{IP: net.ParseIP("fd00::5")},
		&net.IPNet{IP: net.ParseIP("::ffff:192.168.1.9"), Mask: net.CIDRMask(120, 128)},
	}
	tests := []struct{ cidr, want string }{
		{"10.1.0.0/16", "10.1.2.3"},
		{"fd00::/64", "fd00::5"},
		{"192.168.1.0/24", "192.168.1.9"}, // IPv4-mapped form counts as IPv4
		{"172.16.0.0/12", ""},
	}
	for _, tt := range tests {
		got := addrIn(netip.MustParsePrefix(tt.cidr), addrs)
		if tt.want == "" {
			if got != nil {
				t.Errorf("addrIn(%s) = %v; want none", tt.cidr, got)
			}
			continue
		}
		if !got.Equal(net.ParseIP(tt.want)) {
			t.Errorf("addrIn(%s) = %v; want %s", tt.cidr, got, tt.want)
		}
	}
}

func TestDialer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Addr, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- nil
			return
		}
		accepted <- c.RemoteAddr()
		c.Close()
	}()

	d, err := Dialer("127.0.0.0/8")
	if err != nil {
		t.Fatal(err)
	}
	local, ok := d.LocalAddr.(*net.TCPAddr)
	if !ok || !local.IP.Equal(net.IPv4(127, 0, 0, 1)) {
		t.Fatalf("Dialer LocalAddr = %v; want 127.0.0.1", d.LocalAddr)
	}
	c, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if remote := (<-accepted).(*net.TCPAddr); !remote.IP.Equal(net.IPv4(127, 0, 0, 1)) {
		t.Errorf("server saw the connection from %v; want 127.0.0.1", remote)
	}

	if d, err := Dialer(""); err != nil || d.LocalAddr != nil {
		t.Errorf(`Dialer("") = %+v, %v; want a default dialer`, d, err)
	}
	cidr := unusedCIDR(t)
	if _, err := Dialer(cidr); !errors.Is(err, ErrNoAddress) {
		t.Errorf("Dialer(%s) error = %v; want ErrNoAddress", cidr, err)
	}
}
