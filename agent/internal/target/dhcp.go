package target

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"
)

// ErrDHCPConflict: a libvirt network already reserves the MAC or the
// address of a target NIC for something else.
var ErrDHCPConflict = errors.New("DHCP host entry conflict")

// dhcpHost is a DHCP reservation of a target NIC on a libvirt network.
type dhcpHost struct {
	network, mac, ip, name string
}

func (h dhcpHost) xml() string {
	s := fmt.Sprintf("<host mac='%s' ip='%s'", attr(h.mac), attr(h.ip))
	if h.name != "" {
		s += fmt.Sprintf(" name='%s'", attr(h.name))
	}
	return s + "/>"
}

// dhcpHosts are the reservations a spec needs: one per NIC with an
// address on a libvirt network. Only the first NIC on a network carries the
// VM's host name (libvirt refuses two entries of one name). NICs that
// cannot be resolved are left out (BuildDomain reports them).
func (s Spec) dhcpHosts() []dhcpHost {
	nics, err := s.nics()
	if err != nil {
		return nil
	}
	var out []dhcpHost
	named := map[string]bool{}
	for _, n := range nics {
		if n.network == "" || n.ip == "" {
			continue
		}
		h := dhcpHost{network: n.network, mac: n.mac, ip: n.ip}
		if !named[n.network] {
			h.name, named[n.network] = hostname(s.VM.GetVmName()), true
		}
		out = append(out, h)
	}
	return out
}

// hostname turns a VM name into a DNS label, or "" when nothing is left.
func hostname(name string) string {
	b := []byte(strings.ToLower(name))
	for i, c := range b {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			b[i] = '-'
		}
	}
	s := strings.Trim(string(b), "-")
	if len(s) > 63 {
		s = strings.TrimRight(s[:63], "-")
	}
	return s
}

// networkHosts returns the network's DHCP host entries and the flags that
// update its live and persistent definitions.
func networkHosts(n *libvirt.Network) ([]libvirtxml.NetworkDHCPHost, libvirt.NetworkUpdateFlags, error) {
	desc, err := n.GetXMLDesc(0)
	if err != nil {
		return nil, 0, err
	}
	var def libvirtxml.Network
	if err := def.Unmarshal(desc); err != nil {
		return nil, 0, err
	}
	var hosts []libvirtxml.NetworkDHCPHost
	for _, ip := range def.IPs {
		if ip.DHCP != nil {
			hosts = append(hosts, ip.DHCP.Hosts...)
		}
	}
	var flags libvirt.NetworkUpdateFlags
	if active, err := n.IsActive(); err == nil && active {
		flags |= libvirt.NETWORK_UPDATE_AFFECT_LIVE
	}
	if persistent, err := n.IsPersistent(); err == nil && persistent {
		flags |= libvirt.NETWORK_UPDATE_AFFECT_CONFIG
	}
	return hosts, flags, nil
}

func sameIP(a, b string) bool {
	x, y := net.ParseIP(a), net.ParseIP(b)
	return x != nil && x.Equal(y)
}

func sameMAC(a, b string) bool { return strings.EqualFold(a, b) }

// addDHCPHost reserves h's address on its network. A reservation of the
// same MAC and address is kept as it is; one that gives the MAC another
// address, or the address to another MAC, is a conflict.
func addDHCPHost(conn *libvirt.Connect, h dhcpHost) error {
	n, err := conn.LookupNetworkByName(h.network)
	if err != nil {
		return fmt.Errorf("libvirt network %s: %w", h.network, err)
	}
	defer n.Free()
	hosts, flags, err := networkHosts(n)
	if err != nil {
		return fmt.Errorf("libvirt network %s: %w", h.network, err)
	}
	for _, e := range hosts {
		switch macMatch, ipMatch := sameMAC(e.MAC, h.mac), sameIP(e.IP, h.ip); {
		case macMatch && ipMatch:
			return nil
		case macMatch || ipMatch:
			return fmt.Errorf("%w: network %s has host mac=%s ip=%s, wanted mac=%s ip=%s",
				ErrDHCPConflict, h.network, e.MAC, e.IP, h.mac, h.ip)
		}
	}
	if err := n.Update(libvirt.NETWORK_UPDATE_COMMAND_ADD_LAST, libvirt.NETWORK_SECTION_IP_DHCP_HOST, -1, h.xml(), flags); err != nil {
		return fmt.Errorf("add DHCP host %s to network %s: %w", h.xml(), h.network, err)
	}
	return nil
}

// removeDHCPHost deletes the reservation addDHCPHost made: the entry with
// h's MAC, address and name. A missing network or entry is no error.
func removeDHCPHost(conn *libvirt.Connect, h dhcpHost) error {
	n, err := conn.LookupNetworkByName(h.network)
	if isCode(err, libvirt.ERR_NO_NETWORK) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("libvirt network %s: %w", h.network, err)
	}
	defer n.Free()
	hosts, flags, err := networkHosts(n)
	if err != nil {
		return fmt.Errorf("libvirt network %s: %w", h.network, err)
	}
	for _, e := range hosts {
		if sameMAC(e.MAC, h.mac) && sameIP(e.IP, h.ip) && e.Name == h.name {
			if err := n.Update(libvirt.NETWORK_UPDATE_COMMAND_DELETE, libvirt.NETWORK_SECTION_IP_DHCP_HOST, -1, h.xml(), flags); err != nil {
				return fmt.Errorf("remove DHCP host %s from network %s: %w", h.xml(), h.network, err)
			}
		}
	}
	return nil
}

// isCode reports whether err is a libvirt error with code.
func isCode(err error, code libvirt.ErrorNumber) bool {
	var lerr libvirt.Error
	return errors.As(err, &lerr) && lerr.Code == code
}
