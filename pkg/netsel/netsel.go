// Package netsel picks the local address an agent dials from: when a
// migration server has a migration CIDR, every connection it opens to a
// source leaves from the server's own address inside that CIDR.
package netsel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// ErrNoAddress reports that no local interface has an address inside the
// CIDR.
var ErrNoAddress = errors.New("no local address in the migration CIDR")

// LocalAddrIn returns this host's address inside cidr ("10.0.5.0/24",
// "fd00::/64"). Interfaces that are up are searched in the order the
// system lists them; the first address inside the prefix wins.
func LocalAddrIn(cidr string) (net.IP, error) {
	prefix, err := netip.ParsePrefix(cidr)
	if err != nil {
		return nil, fmt.Errorf("migration CIDR %q: %w", cidr, err)
	}
	prefix = prefix.Masked()
	ifaces, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("list network interfaces: %w", err)
	}
	for _, ifc := range ifaces {
		if ifc.Flags&net.FlagUp == 0 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			return nil, fmt.Errorf("addresses of interface %s: %w", ifc.Name, err)
		}
		if ip := addrIn(prefix, addrs); ip != nil {
			return ip, nil
		}
	}
	return nil, fmt.Errorf("%w %s", ErrNoAddress, prefix)
}

// addrIn returns the first of addrs inside prefix.
func addrIn(prefix netip.Prefix, addrs []net.Addr) net.IP {
	for _, a := range addrs {
		var ip net.IP
		switch v := a.(type) {
		case *net.IPNet:
			ip = v.IP
		case *net.IPAddr:
			ip = v.IP
		default:
			continue
		}
		addr, ok := netip.AddrFromSlice(ip)
		if !ok {
			continue
		}
		if prefix.Contains(addr.Unmap()) {
			return ip
		}
	}
	return nil
}

// Dialer returns a dialer whose connections leave from this host's address
// inside cidr; an empty cidr gives a plain dialer (the default route).
func Dialer(cidr string) (*net.Dialer, error) {
	if cidr == "" {
		return &net.Dialer{}, nil
	}
	ip, err := LocalAddrIn(cidr)
	if err != nil {
		return nil, err
	}
	return &net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}}, nil
}
