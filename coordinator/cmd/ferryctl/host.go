package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ferry-v2v/ferry/pkg/client"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

func (a *app) hostCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "host",
		Short: "Target KVM hosts, registered by their agents",
		Long: `A host is a target KVM host running ferry-agent. It appears as
hosts/HOST_NAME when its agent first connects ("ferry-agent --host-name
HOST_NAME") and shows the facts the agent reports: CPUs, memory, running VMs,
libvirt and QEMU versions, interfaces and cache-disk space. Hosts cannot be
created or deleted by hand; give one the migration role with
"ferryctl server create". "ferryctl host maintenance" keeps new VMs off a
host: placement never picks a host in maintenance.`,
	}
	cmd.AddCommand(a.hostGet(), a.hostList(), a.hostMaintenance())
	return cmd
}

func (a *app) hostGet() *cobra.Command {
	return &cobra.Command{
		Use:     "get NAME",
		Short:   "Show a host and its facts",
		Long:    `Show one host (hosts/HOST_NAME or HOST_NAME) with every fact its agent reported.`,
		Example: `  ferryctl host get kvm-1`,
		Args:    exactlyOneArg("the host's name"),
		RunE: a.run(func(ctx context.Context, cl *client.Client, args []string) error {
			resp, err := cl.TargetInventory().GetHost(ctx, &ferryv1.GetHostRequest{Name: resName("hosts", args[0])})
			if err != nil {
				return err
			}
			return a.show(resp, func() []field { return hostDetails(resp) })
		}),
	}
}

func (a *app) hostList() *cobra.Command {
	var lf listFlags
	var cluster string
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "List hosts",
		Long:    `List the hosts agents registered, optionally only those of one cluster.`,
		Example: "  ferryctl host list\n  ferryctl host list --cluster prod -o yaml",
		Args:    noArgs,
		RunE: a.run(func(ctx context.Context, cl *client.Client, _ []string) error {
			all := &ferryv1.ListHostsResponse{}
			err := paginate(ctx, &lf, func(ctx context.Context, token string) (string, error) {
				r, err := cl.TargetInventory().ListHosts(ctx, &ferryv1.ListHostsRequest{PageSize: lf.pageSize, PageToken: token, Cluster: resName("clusters", cluster)})
				all.Hosts, all.NextPageToken = append(all.Hosts, r.GetHosts()...), r.GetNextPageToken()
				return r.GetNextPageToken(), err
			})
			if err != nil {
				return err
			}
			var rows [][]string
			for _, h := range all.GetHosts() {
				f := h.GetFacts()
				rows = append(rows, []string{h.GetName(), h.GetCluster(), yesNo(h.GetConnected()), yesNo(h.GetMaintenance()),
					fmt.Sprint(f.GetCpus()), humanBytes(f.GetMemoryBytes()), fmt.Sprint(f.GetRunningVms()),
					cacheSpace(f), age(h.GetLastSeenTime())})
			}
			headers := []string{"NAME", "CLUSTER", "CONNECTED", "MAINTENANCE", "CPUS", "MEMORY", "VMS", "CACHE FREE/TOTAL", "LAST SEEN"}
			return a.showList(all, headers, rows, all.GetNextPageToken())
		}),
	}
	cmd.Flags().StringVar(&cluster, "cluster", "", "only hosts of this cluster")
	addListFlags(cmd, &lf)
	return cmd
}

func (a *app) hostMaintenance() *cobra.Command {
	var on, off bool
	var reqID string
	cmd := &cobra.Command{
		Use:   "maintenance NAME --on|--off",
		Short: "Put a host into maintenance or take it out",
		Long: `Put a host into maintenance (--on) or take it out (--off). Placement never
picks a host in maintenance for a new job, neither by the allocation strategy
nor when a job names it as its target host; jobs already placed on it go on.
The flag stays when the host's agent reconnects.`,
		Example: "  ferryctl host maintenance kvm-2 --on\n  ferryctl host maintenance kvm-2 --off",
		Args:    exactlyOneArg("the host's name"),
		RunE: a.run(func(ctx context.Context, cl *client.Client, args []string) error {
			if on == off {
				return usagef("give exactly one of --on and --off")
			}
			resp, err := cl.TargetInventory().SetHostMaintenance(ctx, &ferryv1.SetHostMaintenanceRequest{
				Name: resName("hosts", args[0]), Maintenance: on, RequestId: requestID(reqID)})
			if err != nil {
				return err
			}
			return a.show(resp, func() []field { return hostDetails(resp.GetHost()) })
		}),
	}
	cmd.Flags().BoolVar(&on, "on", false, "put the host into maintenance")
	cmd.Flags().BoolVar(&off, "off", false, "take the host out of maintenance")
	cmd.Flags().StringVar(&reqID, "request-id", "", "idempotency key: repeating the call with it changes nothing more (default: generated)")
	return cmd
}

func cacheSpace(f *ferryv1.HostFacts) string {
	if f.GetCacheTotalBytes() == 0 {
		return ""
	}
	return humanBytes(f.GetCacheFreeBytes()) + "/" + humanBytes(f.GetCacheTotalBytes())
}

func hostDetails(h *ferryv1.Host) []field {
	f := h.GetFacts()
	out := []field{
		{"Name", h.GetName()},
		{"Cluster", h.GetCluster()},
		{"Connected", yesNo(h.GetConnected())},
		{"Maintenance", yesNo(h.GetMaintenance())},
		{"Last seen", when(h.GetLastSeenTime())},
		{"Registered", when(h.GetCreateTime())},
		{"Agent version", h.GetAgentVersion()},
		{"CPUs", fmt.Sprint(f.GetCpus())},
		{"Memory", humanBytes(f.GetMemoryBytes())},
		{"Running VMs", fmt.Sprint(f.GetRunningVms())},
		{"libvirt", f.GetLibvirtVersion()},
		{"QEMU", f.GetQemuVersion()},
		{"Cache free/total", cacheSpace(f)},
	}
	for _, nic := range f.GetInterfaces() {
		out = append(out, field{"Interface " + nic.GetName(), strings.Join(nic.GetAddresses(), ", ")})
	}
	for _, c := range h.GetPendingCleanups() {
		out = append(out, field{"Pending cleanup " + c.GetJob(), c.GetTarget().GetVmName() + ": " + c.GetReason()})
	}
	return out
}
