package main

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	"github.com/ferry-v2v/ferry/pkg/client"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

func (a *app) serverCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "server",
		Aliases: []string{"migration-server"},
		Short:   "Migration servers: hosts given the migration role",
		Long: `A migration server is a host given the migration role. Its agent copies
source disks into a cache directory (downstream: source → cache), uploads
them to primary storage (upstream: cache → target storage) and defines the
target VM. It has a type, vmware or kvm, matching the sources it serves (a
host is never both), a cache path, an optional migration CIDR (connections
to sources leave from the host's address inside it) and optional bandwidth
limits from 8Kbps to 32Gbps shared by all its running jobs.

A disabled server starts no new jobs; running jobs go on. Deleting a server
cancels its queued and running jobs.`,
	}
	cmd.AddCommand(a.serverCreate(), a.serverGet(), a.serverList(), a.serverDelete(),
		a.serverUpdate(), a.serverUsage(), a.serverToggle(true), a.serverToggle(false), a.serverBandwidth())
	return cmd
}

func (a *app) serverCreate() *cobra.Command {
	in := &ferryv1.MigrationServer{}
	typ := newEnumFlag(ferryv1.Platform(0).Descriptor(), map[string]string{"vcenter": "vmware", "esxi": "vmware"})
	var host, reqID string
	cmd := &cobra.Command{
		Use:   "create [ID] --host HOST --type kvm|vmware --cache-path DIR ...",
		Short: "Give a host the migration role",
		Long: `Give a host the migration role. The host must have registered (its agent
connected once). ID (lower-case letters, digits and '-') makes the name
migrationServers/ID; without it the coordinator picks one. The new server
is enabled.

Bandwidth is an integer with Kbps, Mbps or Gbps (1K = 1000), from 8Kbps
to 32Gbps; without a flag the direction is unlimited.`,
		Example: `  ferryctl server create --host kvm-1 --type kvm --cache-path /var/lib/ferry/cache
  ferryctl server create vmw-1 --host kvm-2 --type vmware --cache-path /data/cache \
      --migration-cidr 10.20.0.0/24 --downstream 500Mbps --upstream 1Gbps`,
		Args: atMostOneArg("the migration server ID"),
		PreRunE: func(cmd *cobra.Command, _ []string) error {
			return required(cmd, "host", "type", "cache-path")
		},
		RunE: a.run(func(ctx context.Context, cl *client.Client, args []string) error {
			if len(args) == 1 {
				in.Name = resName("migrationServers", args[0])
			}
			in.Host, in.Type = resName("hosts", host), ferryv1.Platform(typ.value)
			resp, err := cl.MigrationServers().CreateMigrationServer(ctx, &ferryv1.CreateMigrationServerRequest{MigrationServer: in, RequestId: requestID(reqID)})
			if err != nil {
				return err
			}
			return a.show(resp, func() []field { return serverDetails(resp) })
		}),
	}
	f := cmd.Flags()
	f.StringVar(&host, "host", "", "the host (hosts/NAME or NAME)")
	addEnumFlag(f, typ, "type", "which sources it serves")
	f.StringVar(&in.CachePath, "cache-path", "", "absolute cache directory on the host; jobs start when their disks fit in its free space, as the host's agent measures it")
	f.StringVar(&in.MigrationCidr, "migration-cidr", "", "connections to sources leave from the host's address in this CIDR")
	f.StringVar(&in.UpstreamBandwidth, "upstream", "", "cache → target storage limit, such as 1Gbps")
	f.StringVar(&in.DownstreamBandwidth, "downstream", "", "source → cache limit, such as 500Mbps")
	f.StringVar(&in.VirtioWinIso, "virtio-win-iso", "", "absolute path of the virtio-win ISO on the host: the Windows virtio drivers guest conversion installs")
	f.StringVar(&in.DisplayName, "display-name", "", "a name for people")
	addRequestIDFlag(cmd, &reqID)
	return cmd
}

func (a *app) serverGet() *cobra.Command {
	return &cobra.Command{
		Use:   "get NAME",
		Short: "Show a migration server",
		Long: `Show one migration server by name (migrationServers/ID or ID), with its
capacity: the cache's total size and its free space less what running jobs
reserve (what new jobs are admitted against), and the CPUs and memory of
its host, total and free (CPUs free: the host's CPUs less the vCPUs of its
running VMs; memory free: what the host reports available). -o json and
-o yaml print the migration server resource alone.`,
		Example: `  ferryctl server get vmw-1 -o yaml`,
		Args:    exactlyOneArg("the migration server's name"),
		RunE: a.run(func(ctx context.Context, cl *client.Client, args []string) error {
			resp, err := cl.MigrationServers().GetMigrationServer(ctx, &ferryv1.GetMigrationServerRequest{Name: resName("migrationServers", args[0])})
			if err != nil {
				return err
			}
			// The host's CPUs and memory are the host's facts; a host the
			// caller may not read, or gone, leaves them out.
			host, _ := cl.TargetInventory().GetHost(ctx, &ferryv1.GetHostRequest{Name: resp.GetHost()})
			return a.show(resp, func() []field { return append(serverDetails(resp), capacityDetails(resp, host)...) })
		}),
	}
}

func (a *app) serverList() *cobra.Command {
	var lf listFlags
	typ := newEnumFlag(ferryv1.Platform(0).Descriptor(), map[string]string{"vcenter": "vmware"})
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "List migration servers",
		Long:    `List migration servers, optionally only those of one type.`,
		Example: "  ferryctl server list\n  ferryctl server list --type vmware -o json",
		Args:    noArgs,
		RunE: a.run(func(ctx context.Context, cl *client.Client, _ []string) error {
			all := &ferryv1.ListMigrationServersResponse{}
			err := paginate(ctx, &lf, func(ctx context.Context, token string) (string, error) {
				r, err := cl.MigrationServers().ListMigrationServers(ctx, &ferryv1.ListMigrationServersRequest{PageSize: lf.pageSize, PageToken: token, Type: ferryv1.Platform(typ.value)})
				all.MigrationServers, all.NextPageToken = append(all.MigrationServers, r.GetMigrationServers()...), r.GetNextPageToken()
				return r.GetNextPageToken(), err
			})
			if err != nil {
				return err
			}
			var rows [][]string
			for _, s := range all.GetMigrationServers() {
				rows = append(rows, []string{s.GetName(), s.GetHost(), enumLower(s.GetType()), yesNo(s.GetEnabled()), yesNo(s.GetConnected()),
					s.GetCachePath(), limit(s.GetUpstreamBandwidth()), limit(s.GetDownstreamBandwidth()), s.GetMigrationCidr()})
			}
			headers := []string{"NAME", "HOST", "TYPE", "ENABLED", "CONNECTED", "CACHE PATH", "UPSTREAM", "DOWNSTREAM", "MIGRATION CIDR"}
			return a.showList(all, headers, rows, all.GetNextPageToken())
		}),
	}
	addEnumFlag(cmd.Flags(), typ, "type", "only servers of this type")
	addListFlags(cmd, &lf)
	return cmd
}

func (a *app) serverDelete() *cobra.Command {
	return &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a migration server, cancelling its jobs",
		Long: `Take the migration role away from a host. Its queued and running jobs are
cancelled (they are listed); the host stays registered.`,
		Example: `  ferryctl server delete migrationServers/vmw-1`,
		Args:    exactlyOneArg("the migration server's name"),
		RunE: a.run(func(ctx context.Context, cl *client.Client, args []string) error {
			name := resName("migrationServers", args[0])
			resp, err := cl.MigrationServers().DeleteMigrationServer(ctx, &ferryv1.DeleteMigrationServerRequest{Name: name})
			if err != nil {
				return err
			}
			text := "deleted " + name
			if n := len(resp.GetCancelledJobs()); n > 0 {
				text += "; cancelled " + strings.Join(resp.GetCancelledJobs(), ", ")
			}
			return a.done(resp, text)
		}),
	}
}

// serverToggle is "server enable" or "server disable".
func (a *app) serverToggle(enable bool) *cobra.Command {
	verb, long := "disable", `Disable a migration server: the scheduler starts no new jobs on it; running
jobs go on. Queued jobs wait until it is enabled again.`
	if enable {
		verb, long = "enable", `Enable a migration server: the scheduler may start queued jobs on it again.`
	}
	var reqID string
	cmd := &cobra.Command{
		Use:     verb + " NAME",
		Short:   strings.ToUpper(verb[:1]) + verb[1:] + " a migration server",
		Long:    long,
		Example: "  ferryctl server " + verb + " migrationServers/vmw-1",
		Args:    exactlyOneArg("the migration server's name"),
		RunE: a.run(func(ctx context.Context, cl *client.Client, args []string) error {
			name := resName("migrationServers", args[0])
			var resp proto.Message
			var ms *ferryv1.MigrationServer
			if enable {
				r, err := cl.MigrationServers().EnableMigrationServer(ctx, &ferryv1.EnableMigrationServerRequest{Name: name, RequestId: requestID(reqID)})
				if err != nil {
					return err
				}
				resp, ms = r, r.GetMigrationServer()
			} else {
				r, err := cl.MigrationServers().DisableMigrationServer(ctx, &ferryv1.DisableMigrationServerRequest{Name: name, RequestId: requestID(reqID)})
				if err != nil {
					return err
				}
				resp, ms = r, r.GetMigrationServer()
			}
			return a.show(resp, func() []field { return serverDetails(ms) })
		}),
	}
	addRequestIDFlag(cmd, &reqID)
	return cmd
}

func (a *app) serverBandwidth() *cobra.Command {
	var up, down, reqID string
	var clearUp, clearDown bool
	cmd := &cobra.Command{
		Use:   "bandwidth NAME [--upstream RATE] [--downstream RATE]",
		Short: "Set or clear a migration server's bandwidth limits",
		Long: `Set the bandwidth limits of a migration server. Each direction is one
token bucket on the server's host, shared by all the server's jobs. A change
reaches the jobs already running within 2 s: the coordinator sends it to the
server's agent as soon as it is committed, and the agent's buckets take the
new rate from the next byte; jobs started later start with it. An agent that
is disconnected gets the limits when it connects again.

RATE is an integer with Kbps, Mbps or Gbps (1K = 1000), from 8Kbps to 32Gbps.
An empty RATE or --clear-upstream/--clear-downstream sets the direction back
to unlimited; a direction not named keeps its limit.

  upstream    cache → target primary storage
  downstream  source → cache`,
		Example: `  ferryctl server bandwidth vmw-1 --upstream 100Mbps --downstream 1Gbps
  ferryctl server bandwidth vmw-1 --clear-upstream
  ferryctl server bandwidth vmw-1 --downstream ""     # unlimited`,
		Args: exactlyOneArg("the migration server's name"),
		PreRunE: func(cmd *cobra.Command, _ []string) error {
			f := cmd.Flags()
			if f.Changed("upstream") && clearUp || f.Changed("downstream") && clearDown {
				return usagef("give a direction either a rate or --clear-*, not both")
			}
			if !f.Changed("upstream") && !f.Changed("downstream") && !clearUp && !clearDown {
				return usageError{errNoChange}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &ferryv1.SetMigrationServerBandwidthRequest{
				Name:                resName("migrationServers", args[0]),
				UpstreamBandwidth:   bandwidthChange(cmd.Flags().Changed("upstream"), up, clearUp),
				DownstreamBandwidth: bandwidthChange(cmd.Flags().Changed("downstream"), down, clearDown),
				RequestId:           requestID(reqID),
			}
			return a.run(func(ctx context.Context, cl *client.Client, _ []string) error {
				resp, err := cl.MigrationServers().SetMigrationServerBandwidth(ctx, req)
				if err != nil {
					return err
				}
				return a.show(resp, func() []field { return serverDetails(resp.GetMigrationServer()) })
			})(cmd, args)
		},
	}
	f := cmd.Flags()
	f.StringVar(&up, "upstream", "", "cache → target storage limit; empty for unlimited")
	f.StringVar(&down, "downstream", "", "source → cache limit; empty for unlimited")
	f.BoolVar(&clearUp, "clear-upstream", false, "make upstream unlimited")
	addRequestIDFlag(cmd, &reqID)
	f.BoolVar(&clearDown, "clear-downstream", false, "make downstream unlimited")
	return cmd
}

// bandwidthChange is the optional field of one direction: absent to keep
// the limit (the flag not given), empty to clear it, else the new rate.
func bandwidthChange(given bool, rate string, clear bool) *string {
	switch {
	case clear:
		return proto.String("")
	case !given:
		return nil
	default:
		return proto.String(strings.TrimSpace(rate))
	}
}

// limit spells a bandwidth limit for a table.
func limit(s string) string {
	if s == "" {
		return "unlimited"
	}
	return s
}

func limitDetail(canonical string, bps int64) string {
	if canonical == "" {
		return "unlimited"
	}
	return fmt.Sprintf("%s (%d bit/s)", canonical, bps)
}

func serverDetails(s *ferryv1.MigrationServer) []field {
	return []field{
		{"Name", s.GetName()},
		{"Display name", s.GetDisplayName()},
		{"Description", s.GetDescription()},
		{"Host", s.GetHost()},
		{"Type", enumLower(s.GetType())},
		{"Enabled", yesNo(s.GetEnabled())},
		{"Connected", yesNo(s.GetConnected())},
		{"Cache path", s.GetCachePath()},
		{"Migration CIDR", s.GetMigrationCidr()},
		{"Upstream", limitDetail(s.GetUpstreamBandwidth(), s.GetUpstreamBitsPerSecond())},
		{"Downstream", limitDetail(s.GetDownstreamBandwidth(), s.GetDownstreamBitsPerSecond())},
		{"virtio-win ISO", orDefault(s.GetVirtioWinIso(), "(none)")},
		{"Created", when(s.GetCreateTime())},
	}
}

// capacityDetails are the capacity lines of 'server get': the server's
// cache room, and its host's CPUs, memory and addresses.
func capacityDetails(s *ferryv1.MigrationServer, h *ferryv1.Host) []field {
	cache := "not reported yet (the host's agent measures cache_path a heartbeat after it learns it)"
	if s.GetCacheTotalBytes() > 0 {
		cache = fmt.Sprintf("%s total, %s free (%s reserved by running jobs)", humanBytes(s.GetCacheTotalBytes()),
			humanBytes(s.GetCacheFreeBytes()), humanBytes(s.GetCacheReservedBytes()))
	}
	out := []field{{"Cache", cache}}
	f := h.GetFacts()
	if f == nil {
		return append(out, field{"Host CPUs", "unknown"}, field{"Host memory", "unknown"})
	}
	cpus := fmt.Sprintf("%d total, %d free", f.GetCpus(), max(f.GetCpus()-f.GetRunningVcpus(), 0))
	mem := humanBytes(f.GetMemoryBytes()) + " total"
	if f.GetMemoryAvailableBytes() > 0 {
		mem += ", " + humanBytes(f.GetMemoryAvailableBytes()) + " free"
	}
	return append(out, field{"Host CPUs", cpus}, field{"Host memory", mem}, field{"Host addresses", hostAddresses(f, s.GetMigrationCidr())})
}

// hostAddresses are the host's addresses, only those inside cidr when one
// is given (the migration network).
func hostAddresses(f *ferryv1.HostFacts, cidr string) string {
	prefix, perr := netip.ParsePrefix(cidr)
	var out []string
	for _, ifc := range f.GetInterfaces() {
		for _, a := range ifc.GetAddresses() {
			p, err := netip.ParsePrefix(a)
			if err != nil || cidr != "" && perr == nil && !prefix.Contains(p.Addr()) {
				continue
			}
			out = append(out, ifc.GetName()+" "+a)
		}
	}
	if len(out) == 0 {
		return "none reported"
	}
	return strings.Join(out, ", ")
}
