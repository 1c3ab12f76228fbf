package facts

import (
	"context"
	"encoding/xml"
	"strings"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// networkXML is the part of a libvirt network's XML the facts read: its
// name and the static DHCP hosts of its IP ranges.
type networkXML struct {
	Name string `xml:"name"`
	IPs  []struct {
		Hosts []struct {
			MAC  string `xml:"mac,attr"`
			IP   string `xml:"ip,attr"`
			Name string `xml:"name,attr"`
		} `xml:"dhcp>host"`
	} `xml:"ip"`
}

// parseNetwork reads a libvirt network's name and DHCP host entries.
func parseNetwork(b []byte) (*ferryv1.LibvirtNetwork, error) {
	var x networkXML
	if err := xml.Unmarshal(b, &x); err != nil {
		return nil, err
	}
	n := &ferryv1.LibvirtNetwork{Name: x.Name}
	for _, ip := range x.IPs {
		for _, h := range ip.Hosts {
			n.DhcpHosts = append(n.DhcpHosts, &ferryv1.DhcpHost{Mac: strings.ToLower(h.MAC), Ip: h.IP, Name: h.Name})
		}
	}
	return n, nil
}

// libvirtNetworks lists the host's libvirt networks, defined or running,
// with their DHCP host entries; a network that cannot be read is left
// out.
func (c *Collector) libvirtNetworks(ctx context.Context) []*ferryv1.LibvirtNetwork {
	out, err := c.command(ctx, "virsh", "-c", "qemu:///system", "net-list", "--all", "--name")
	if err != nil {
		return nil
	}
	var nets []*ferryv1.LibvirtNetwork
	for _, name := range strings.Fields(string(out)) {
		b, err := c.command(ctx, "virsh", "-c", "qemu:///system", "net-dumpxml", name)
		if err != nil {
			continue
		}
		n, err := parseNetwork(b)
		if err != nil {
			c.log.Debug("read libvirt network", "network", name, "err", err)
			continue
		}
		nets = append(nets, n)
	}
	return nets
}
