package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ferry-v2v/ferry/pkg/client"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

func (a *app) networkCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "network",
		Aliases: []string{"l3-network"},
		Short:   "L3 networks: where target NICs attach, and their address ranges",
		Long: `An L3 network belongs to a target cluster: a libvirt network or a Linux
bridge on its hosts, with an address range. A job maps each source NIC onto
one; the target NIC keeps the source MAC unless told otherwise and gets an
address from the range (recorded as a DHCP reservation) unless one is given.
Allocation skips an address a libvirt network of the cluster's hosts
already reserves for another MAC (a DHCP host entry).

The migrated VM keeps its address after its job is deleted: the network
lists it under its reservations, out of the pool, until 'network
release-address' returns it (once the VM no longer uses it) or the network
is deleted.`,
	}
	cmd.AddCommand(a.networkCreate(), a.networkGet(), a.networkList(), a.networkUpdate(), a.networkDelete(), a.networkReleaseAddress())
	return cmd
}

func (a *app) networkCreate() *cobra.Command {
	in := &ferryv1.L3Network{}
	var cluster, ipRange, reqID string
	cmd := &cobra.Command{
		Use:   "create [ID] --cluster CLUSTER (--libvirt-network NAME | --bridge NAME) --ip-range START-END ...",
		Short: "Create an L3 network",
		Long: `Create an L3 network in a target cluster. ID (lower-case letters, digits and
'-') makes the name l3Networks/ID; without it the coordinator picks one.
Give exactly one of --libvirt-network and --bridge.`,
		Example: `  ferryctl network create lan --cluster prod --bridge br0 \
      --ip-range 10.0.0.100-10.0.0.199 --gateway 10.0.0.1 --prefix-length 24
  ferryctl network create --cluster prod --libvirt-network default --ip-range 192.168.122.50-192.168.122.99`,
		Args: atMostOneArg("the network ID"),
		PreRunE: func(cmd *cobra.Command, _ []string) error {
			return required(cmd, "cluster")
		},
		RunE: a.run(func(ctx context.Context, cl *client.Client, args []string) error {
			if len(args) == 1 {
				in.Name = resName("l3Networks", args[0])
			}
			in.Cluster = resName("clusters", cluster)
			if ipRange != "" {
				start, end, ok := strings.Cut(ipRange, "-")
				if !ok {
					return usagef("--ip-range %q: want START-END, such as 10.0.0.100-10.0.0.199", ipRange)
				}
				in.IpRangeStart, in.IpRangeEnd = strings.TrimSpace(start), strings.TrimSpace(end)
			}
			resp, err := cl.TargetInventory().CreateL3Network(ctx, &ferryv1.CreateL3NetworkRequest{L3Network: in, RequestId: requestID(reqID)})
			if err != nil {
				return err
			}
			return a.show(resp, func() []field { return networkDetails(resp) })
		}),
	}
	f := cmd.Flags()
	f.StringVar(&cluster, "cluster", "", "the target cluster it belongs to")
	f.StringVar(&in.LibvirtNetwork, "libvirt-network", "", "libvirt network name on the hosts")
	f.StringVar(&in.Bridge, "bridge", "", "Linux bridge name on the hosts")
	f.StringVar(&ipRange, "ip-range", "", "allocation range START-END, inclusive")
	f.StringVar(&in.Gateway, "gateway", "", "default gateway")
	f.StringSliceVar(&in.DnsServers, "dns", nil, "DNS servers, comma-separated (at most 3)")
	f.Int32Var(&in.PrefixLength, "prefix-length", 0, "prefix length of the subnet (24 for a /24)")
	f.StringVar(&in.DisplayName, "display-name", "", "a name for people")
	addRequestIDFlag(cmd, &reqID)
	return cmd
}

func (a *app) networkGet() *cobra.Command {
	return &cobra.Command{
		Use:     "get NAME",
		Short:   "Show an L3 network",
		Long:    `Show one L3 network by name (l3Networks/ID or ID).`,
		Example: `  ferryctl network get lan`,
		Args:    exactlyOneArg("the network's name"),
		RunE: a.run(func(ctx context.Context, cl *client.Client, args []string) error {
			resp, err := cl.TargetInventory().GetL3Network(ctx, &ferryv1.GetL3NetworkRequest{Name: resName("l3Networks", args[0])})
			if err != nil {
				return err
			}
			return a.show(resp, func() []field { return networkDetails(resp) })
		}),
	}
}

func (a *app) networkList() *cobra.Command {
	var lf listFlags
	var cluster string
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "List L3 networks",
		Long:    `List L3 networks, optionally only those of one cluster.`,
		Example: "  ferryctl network list\n  ferryctl network list --cluster prod -o yaml",
		Args:    noArgs,
		RunE: a.run(func(ctx context.Context, cl *client.Client, _ []string) error {
			all := &ferryv1.ListL3NetworksResponse{}
			err := paginate(ctx, &lf, func(ctx context.Context, token string) (string, error) {
				r, err := cl.TargetInventory().ListL3Networks(ctx, &ferryv1.ListL3NetworksRequest{PageSize: lf.pageSize, PageToken: token, Cluster: resName("clusters", cluster)})
				all.L3Networks, all.NextPageToken = append(all.L3Networks, r.GetL3Networks()...), r.GetNextPageToken()
				return r.GetNextPageToken(), err
			})
			if err != nil {
				return err
			}
			var rows [][]string
			for _, n := range all.GetL3Networks() {
				rows = append(rows, []string{n.GetName(), n.GetDisplayName(), n.GetCluster(), networkDevice(n), networkRange(n), networkGateway(n), age(n.GetCreateTime())})
			}
			headers := []string{"NAME", "DISPLAY NAME", "CLUSTER", "DEVICE", "RANGE", "GATEWAY", "AGE"}
			return a.showList(all, headers, rows, all.GetNextPageToken())
		}),
	}
	cmd.Flags().StringVar(&cluster, "cluster", "", "only networks of this cluster")
	addListFlags(cmd, &lf)
	return cmd
}

func (a *app) networkDelete() *cobra.Command {
	return &cobra.Command{
		Use:     "delete NAME",
		Short:   "Delete an L3 network",
		Long:    `Delete an L3 network from the target inventory; refused while an unfinished job uses it. The libvirt network or bridge is not touched.`,
		Example: `  ferryctl network delete l3Networks/lan`,
		Args:    exactlyOneArg("the network's name"),
		RunE: a.run(func(ctx context.Context, cl *client.Client, args []string) error {
			name := resName("l3Networks", args[0])
			resp, err := cl.TargetInventory().DeleteL3Network(ctx, &ferryv1.DeleteL3NetworkRequest{Name: name})
			if err != nil {
				return err
			}
			return a.done(resp, "deleted "+name)
		}),
	}
}

func (a *app) networkReleaseAddress() *cobra.Command {
	var reqID string
	cmd := &cobra.Command{
		Use:   "release-address NAME IP",
		Short: "Return a migrated VM's reserved address to the network's pool",
		Long: `Return to the pool an address a migrated VM kept after its job was deleted
(the network's reservations, shown by 'network get'). Do it once the VM no
longer uses the address, and remove the VM's DHCP host entry from the
libvirt network too: allocation also skips an address a libvirt network
reserves for another MAC.`,
		Example: `  ferryctl network release-address lan 10.0.0.105`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 2 {
				return usagef("want two arguments, the network's name and the address; got %d", len(args))
			}
			return nil
		},
		RunE: a.run(func(ctx context.Context, cl *client.Client, args []string) error {
			name := resName("l3Networks", args[0])
			resp, err := cl.TargetInventory().ReleaseL3NetworkAddress(ctx, &ferryv1.ReleaseL3NetworkAddressRequest{Name: name, Ip: args[1],
				RequestId: requestID(reqID)})
			if err != nil {
				return err
			}
			return a.done(resp, fmt.Sprintf("released %s on %s", args[1], name))
		}),
	}
	addRequestIDFlag(cmd, &reqID)
	return cmd
}

func networkDevice(n *ferryv1.L3Network) string {
	if n.GetBridge() != "" {
		return "bridge:" + n.GetBridge()
	}
	if n.GetLibvirtNetwork() != "" {
		return "network:" + n.GetLibvirtNetwork()
	}
	return ""
}

func networkRange(n *ferryv1.L3Network) string {
	if n.GetIpRangeStart() == "" && n.GetIpRangeEnd() == "" {
		return ""
	}
	return n.GetIpRangeStart() + "-" + n.GetIpRangeEnd()
}

func networkGateway(n *ferryv1.L3Network) string {
	if n.GetPrefixLength() == 0 {
		return n.GetGateway()
	}
	return fmt.Sprintf("%s/%d", orDefault(n.GetGateway(), "-"), n.GetPrefixLength())
}

func networkDetails(n *ferryv1.L3Network) []field {
	return []field{
		{"Name", n.GetName()},
		{"Display name", n.GetDisplayName()},
		{"Cluster", n.GetCluster()},
		{"Libvirt network", n.GetLibvirtNetwork()},
		{"Bridge", n.GetBridge()},
		{"IP range", networkRange(n)},
		{"Gateway", n.GetGateway()},
		{"DNS", strings.Join(n.GetDnsServers(), ", ")},
		{"Prefix length", fmt.Sprint(n.GetPrefixLength())},
		{"Reserved", networkReservations(n)},
		{"Description", n.GetDescription()},
		{"Created", when(n.GetCreateTime())},
		{"Updated", when(n.GetUpdateTime())},
	}
}

// networkReservations lists the addresses migrated VMs kept:
// "10.0.0.105 52:54:00:12:34:56 web-1 (migrationJobs/ID); ...".
func networkReservations(n *ferryv1.L3Network) string {
	var lines []string
	for _, r := range n.GetReservations() {
		lines = append(lines, fmt.Sprintf("%s %s %s (%s)", r.GetIp(), r.GetMac(), r.GetVmName(), r.GetJob()))
	}
	return strings.Join(lines, "; ")
}
