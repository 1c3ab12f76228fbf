package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/ferry-v2v/ferry/pkg/client"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

func (a *app) settingsCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "settings",
		Short: "Cluster-wide settings: parallelism, cache retention, allocation, grace",
		Long: `Settings are cluster-wide:

  job parallelism           how many jobs run at once (default 10)
  cache retention           how long a cache outlives its job (default 24h)
  host allocation strategy  which connected host of the target cluster, not
                            in maintenance, gets a VM whose job names none:
                            fewest-vms (default; fewest-running-vms),
                            most-free-memory, least-memory-used,
                            least-cpu-used (shares of the host's memory or
                            CPUs), or migration-server (the migration
                            server's own host); each counts the VMs of
                            queued and running jobs
  agent grace period        how long an agent may be gone before its jobs
                            fail with "agent lost" (default 5m)`,
	}
	cmd.AddCommand(a.settingsGet(), a.settingsUpdate())
	return cmd
}

func (a *app) settingsGet() *cobra.Command {
	return &cobra.Command{
		Use:     "get",
		Short:   "Show the settings",
		Long:    `Show the cluster-wide settings.`,
		Example: "  ferryctl settings get\n  ferryctl settings get -o json",
		Args:    noArgs,
		RunE: a.run(func(ctx context.Context, cl *client.Client, _ []string) error {
			resp, err := cl.Settings().GetSettings(ctx, &ferryv1.GetSettingsRequest{})
			if err != nil {
				return err
			}
			return a.show(resp, func() []field { return settingsDetails(resp) })
		}),
	}
}

// settingsFields maps each flag of "settings update" to its field path.
var settingsFields = []struct{ flag, path string }{
	{"job-parallelism", "job_parallelism"},
	{"cache-retention", "cache_retention"},
	{"host-allocation", "host_allocation_strategy"},
	{"agent-grace-period", "agent_grace_period"},
	{"inventory-sync-interval", "inventory_sync_interval"},
	{"guest-shutdown-timeout", "guest_shutdown_timeout"},
}

func (a *app) settingsUpdate() *cobra.Command {
	var parallelism int32
	var retention, grace, syncEvery, shutdown time.Duration
	var etag string
	alloc := newEnumFlag(ferryv1.HostAllocationStrategy(0).Descriptor(), map[string]string{"fewest-vms": "fewest-running-vms"})
	cmd := &cobra.Command{
		Use:   "update [--job-parallelism N] [--cache-retention D] [--host-allocation S] [--agent-grace-period D] [--inventory-sync-interval D] [--guest-shutdown-timeout D]",
		Short: "Change some settings",
		Long: `Change the settings named by the flags given; the others keep their values
(the flags given become the request's update_mask). Durations are Go
durations: 90s, 30m, 24h. With --etag (as 'settings get' shows it) the update
applies only if nobody changed the settings since: otherwise it is ABORTED.`,
		Example: `  ferryctl settings update --job-parallelism 20
  ferryctl settings update --cache-retention 72h --host-allocation most-free-memory`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &ferryv1.UpdateSettingsRequest{
				Settings: &ferryv1.Settings{
					JobParallelism:         parallelism,
					CacheRetention:         durationpb.New(retention),
					HostAllocationStrategy: ferryv1.HostAllocationStrategy(alloc.value),
					AgentGracePeriod:       durationpb.New(grace),
					InventorySyncInterval:  durationpb.New(syncEvery),
					GuestShutdownTimeout:   durationpb.New(shutdown),
					Etag:                   etag,
				},
				UpdateMask: &fieldmaskpb.FieldMask{},
			}
			for _, f := range settingsFields {
				if cmd.Flags().Changed(f.flag) {
					req.UpdateMask.Paths = append(req.UpdateMask.Paths, f.path)
				}
			}
			if len(req.UpdateMask.Paths) == 0 {
				return usageError{errNoChange}
			}
			return a.run(func(ctx context.Context, cl *client.Client, _ []string) error {
				resp, err := cl.Settings().UpdateSettings(ctx, req)
				if err != nil {
					return err
				}
				return a.show(resp, func() []field { return settingsDetails(resp) })
			})(cmd, args)
		},
	}
	f := cmd.Flags()
	f.Int32Var(&parallelism, "job-parallelism", 0, "how many jobs run at once")
	f.DurationVar(&retention, "cache-retention", 0, "how long a cache outlives its job")
	addEnumFlag(f, alloc, "host-allocation", "host allocation strategy on shared storage")
	f.DurationVar(&grace, "agent-grace-period", 0, "how long an agent may be gone before its jobs fail")
	f.DurationVar(&syncEvery, "inventory-sync-interval", 0, "how often the leader syncs every source's inventory")
	f.DurationVar(&shutdown, "guest-shutdown-timeout", 0, "how long a guest shutdown may take before the VM is powered off (a VMware copy, a warm cutover)")
	f.StringVar(&etag, "etag", "", "update only if the settings still have this etag (default: unconditional)")
	return cmd
}

func settingsDetails(s *ferryv1.Settings) []field {
	return []field{
		{"Job parallelism", fmt.Sprint(s.GetJobParallelism())},
		{"Cache retention", duration(s.GetCacheRetention())},
		{"Host allocation strategy", enumLower(s.GetHostAllocationStrategy())},
		{"Agent grace period", duration(s.GetAgentGracePeriod())},
		{"Inventory sync interval", duration(s.GetInventorySyncInterval())},
		{"Guest shutdown timeout", duration(s.GetGuestShutdownTimeout())},
		{"Etag", s.GetEtag()},
	}
}
