package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ferry-v2v/ferry/pkg/client"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

func (a *app) jobCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "job",
		Short: "Migration jobs: one source VM moved to one target VM",
		Long: `A migration job moves one source VM to one target VM on one migration
server. It is QUEUED until the scheduler starts it (a queued job says why it
waits), then RUNNING through three phases:

  CONVERTING   source disks → the migration server's cache
  UPLOADING    cache → primary storage
  SYNCING      a warm job (--mode warm) between precopy rounds: every
               precopy interval only what changed moves to the cache and
               on to primary storage, until "job cutover"
  CONFIGURING  the target VM is defined (and started)

(an export job, 'ferryctl export create', runs CONVERTING then EXPORTING:
cache → a bundle at its destination) and ends SUCCEEDED, FAILED (with a reason) or CANCELLED. Failed and
cancelled jobs can be restarted (the cache makes it fast); finished jobs can
be deleted. "job watch" follows jobs live.`,
	}
	cmd.AddCommand(a.jobCreate(), a.jobPreview(), a.jobGet(), a.jobList(), a.jobWatch(),
		a.jobUpdate(), a.jobExport(), a.jobCancel(), a.jobCutover(), a.jobRestart(), a.jobDelete())
	return cmd
}

func (a *app) jobGet() *cobra.Command {
	return &cobra.Command{
		Use:   "get NAME",
		Short: "Show a job with its disks' progress and phase timings",
		Long: `Show one job by name (migrationJobs/ID or ID): its target, state, phase, per-disk progress, warnings and times,
and for its latest attempt when each phase began and ended (counted from the first phase's start), the bytes it
moved and its rate. UPLOADING runs beside CONVERTING: it begins while the job's phase still says CONVERTING.
A warm job also shows each precopy round: bytes changed, read and uploaded, its duration and the cutover
downtime it predicts (its bytes over the measured rate plus configuring), and after the cutover the measured
downtime (source stopped → target started).`,
		Example: `  ferryctl job get migrationJobs/4f2c
  ferryctl job get 4f2c -o yaml`,
		Args: exactlyOneArg("the job's name"),
		RunE: a.run(func(ctx context.Context, cl *client.Client, args []string) error {
			resp, err := cl.Jobs().GetMigrationJob(ctx, &ferryv1.GetMigrationJobRequest{Name: resName("migrationJobs", args[0])})
			if err != nil {
				return err
			}
			if err := a.show(resp, func() []field { return jobDetails(resp) }); err != nil {
				return err
			}
			if a.output != "table" {
				return nil
			}
			if len(resp.GetDisks()) > 0 {
				fmt.Fprintln(a.io.Out)
				if err := diskTable(a.io.Out, resp.GetDisks()); err != nil {
					return err
				}
				if err := verifyTable(a.io.Out, resp.GetDisks()); err != nil {
					return err
				}
			}
			if len(resp.GetPrecopyRounds()) > 0 {
				fmt.Fprintln(a.io.Out)
				if err := roundTable(a.io.Out, resp.GetPrecopyRounds()); err != nil {
					return err
				}
			}
			if len(resp.GetPhaseTimings()) > 0 {
				fmt.Fprintln(a.io.Out)
				return phaseTable(a.io.Out, resp.GetPhaseTimings())
			}
			return nil
		}),
	}
}

func (a *app) jobList() *cobra.Command {
	var lf listFlags
	var server, source string
	state := newEnumFlag(ferryv1.MigrationJobState(0).Descriptor(), nil)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List jobs",
		Long:  `List jobs, optionally only those in one state, of one migration server or of one source.`,
		Example: `  ferryctl job list
  ferryctl job list --state failed
  ferryctl job list --migration-server vmw-1 -o json`,
		Args: noArgs,
		RunE: a.run(func(ctx context.Context, cl *client.Client, _ []string) error {
			all := &ferryv1.ListMigrationJobsResponse{}
			err := paginate(ctx, &lf, func(ctx context.Context, token string) (string, error) {
				r, err := cl.Jobs().ListMigrationJobs(ctx, &ferryv1.ListMigrationJobsRequest{
					PageSize: lf.pageSize, PageToken: token, State: ferryv1.MigrationJobState(state.value),
					MigrationServer: resName("migrationServers", server), Source: resName("sources", source),
				})
				all.Jobs, all.NextPageToken = append(all.Jobs, r.GetJobs()...), r.GetNextPageToken()
				return r.GetNextPageToken(), err
			})
			if err != nil {
				return err
			}
			var rows [][]string
			for _, j := range all.GetJobs() {
				rows = append(rows, []string{j.GetName(), j.GetSourceVm(), j.GetTarget().GetVmName(), jobState(j),
					jobProgress(j), j.GetMigrationServer(), age(j.GetCreateTime())})
			}
			headers := []string{"NAME", "SOURCE VM", "TARGET VM", "STATE", "PROGRESS", "MIGRATION SERVER", "AGE"}
			return a.showList(all, headers, rows, all.GetNextPageToken())
		}),
	}
	addEnumFlag(cmd.Flags(), state, "state", "only jobs in this state")
	cmd.Flags().StringVar(&server, "migration-server", "", "only jobs of this migration server")
	cmd.Flags().StringVar(&source, "source", "", "only jobs of this source")
	addListFlags(cmd, &lf)
	return cmd
}

func (a *app) jobCancel() *cobra.Command {
	var reason, reqID string
	cmd := &cobra.Command{
		Use:   "cancel NAME",
		Short: "Cancel a queued or running job",
		Long: `Cancel a queued or running job. A running job's agent stops it; its cache
stays (for the retention setting), so a restart later is fast.`,
		Example: `  ferryctl job cancel migrationJobs/4f2c --reason "wrong network"`,
		Args:    exactlyOneArg("the job's name"),
		RunE: a.run(func(ctx context.Context, cl *client.Client, args []string) error {
			resp, err := cl.Jobs().CancelMigrationJob(ctx, &ferryv1.CancelMigrationJobRequest{Name: resName("migrationJobs", args[0]), Reason: reason,
				RequestId: requestID(reqID)})
			if err != nil {
				return err
			}
			return a.done(resp, resp.GetJob().GetName()+" "+jobState(resp.GetJob()))
		}),
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why, recorded on the job")
	addRequestIDFlag(cmd, &reqID)
	return cmd
}

func (a *app) jobRestart() *cobra.Command {
	var reqID string
	conversion := newEnumFlag(ferryv1.GuestConversion(0).Descriptor(), nil)
	cmd := &cobra.Command{
		Use:   "restart NAME",
		Short: "Queue a failed or cancelled job again",
		Long: `Queue a failed or cancelled job again. It keeps its name; what its cache
already holds is not copied again. Unless its spec names target.host, the job is
placed again by the cluster's host allocation strategy (its target_host may change;
placement_reason says it was chosen again at restart); the restart is refused when
no host of the cluster can take it. --guest-conversion replaces the job's option,
e.g. off after a conversion failed: the cache is uploaded as it was copied.`,
		Example: `  ferryctl job restart migrationJobs/4f2c && ferryctl job watch migrationJobs/4f2c
  ferryctl job restart migrationJobs/4f2c --guest-conversion off`,
		Args: exactlyOneArg("the job's name"),
		RunE: a.run(func(ctx context.Context, cl *client.Client, args []string) error {
			resp, err := cl.Jobs().RestartMigrationJob(ctx, &ferryv1.RestartMigrationJobRequest{Name: resName("migrationJobs", args[0]),
				RequestId: requestID(reqID), GuestConversion: ferryv1.GuestConversion(conversion.value)})
			if err != nil {
				return err
			}
			return a.done(resp, resp.GetJob().GetName()+" "+jobState(resp.GetJob()))
		}),
	}
	addRequestIDFlag(cmd, &reqID)
	addEnumFlag(cmd.Flags(), conversion, "guest-conversion", "replace the job's guest conversion option (auto, on, off)")
	return cmd
}

func (a *app) jobDelete() *cobra.Command {
	return &cobra.Command{
		Use:     "delete NAME",
		Short:   "Delete a finished job",
		Long:    `Delete a job that has ended (SUCCEEDED, FAILED or CANCELLED); cancel a running one first.`,
		Example: `  ferryctl job delete migrationJobs/4f2c`,
		Args:    exactlyOneArg("the job's name"),
		RunE: a.run(func(ctx context.Context, cl *client.Client, args []string) error {
			name := resName("migrationJobs", args[0])
			resp, err := cl.Jobs().DeleteMigrationJob(ctx, &ferryv1.DeleteMigrationJobRequest{Name: name})
			if err != nil {
				return err
			}
			return a.done(resp, "deleted "+name)
		}),
	}
}

// jobState spells a job's state with its phase: "RUNNING/UPLOADING".
func jobState(j *ferryv1.MigrationJob) string {
	s := enumShort(j.GetState())
	if p := enumShort(j.GetPhase()); p != "" && j.GetState() == ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING {
		s += "/" + p
	}
	return s
}

// terminal reports whether a job has ended.
func terminal(j *ferryv1.MigrationJob) bool {
	switch j.GetState() {
	case ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED,
		ferryv1.MigrationJobState_MIGRATION_JOB_STATE_FAILED,
		ferryv1.MigrationJobState_MIGRATION_JOB_STATE_CANCELLED:
		return true
	}
	return false
}

// jobTotals sums the progress of a job's disks in the current phase.
func jobTotals(j *ferryv1.MigrationJob) (done, total int64, rate float64) {
	for _, d := range j.GetDisks() {
		done += d.GetDoneBytes()
		total += d.GetTotalBytes()
		rate += d.GetBytesPerSecond()
	}
	return done, total, rate
}

// jobProgress is the progress column of a job.
func jobProgress(j *ferryv1.MigrationJob) string {
	switch j.GetState() {
	case ferryv1.MigrationJobState_MIGRATION_JOB_STATE_QUEUED:
		return j.GetWaitingReason()
	case ferryv1.MigrationJobState_MIGRATION_JOB_STATE_RUNNING:
		done, total, _ := jobTotals(j)
		return percent(done, total)
	case ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED:
		if n := len(j.GetWarnings()); n > 0 {
			return fmt.Sprintf("%d warning(s)", n)
		}
		return "done in " + duration(j.GetDuration())
	default:
		return j.GetReason()
	}
}

func jobDetails(j *ferryv1.MigrationJob) []field {
	t := j.GetTarget()
	out := []field{
		{"Name", j.GetName()},
		{"Display name", j.GetDisplayName()},
		{"Description", j.GetDescription()},
		{"State", jobState(j)},
		{"Reason", j.GetReason()},
		{"Waiting", j.GetWaitingReason()},
		{"Source", j.GetSource()},
		{"Source VM", j.GetSourceVm()},
		{"Migration server", j.GetMigrationServer()},
		{"Assigned host", j.GetAssignedHost()},
		{"Target VM", t.GetVmName()},
		{"Cluster", t.GetCluster()},
		{"Primary storage", t.GetPrimaryStorage()},
		{"Target host", orDefault(t.GetHost(), "by the allocation strategy")},
		{"CPUs / memory", fmt.Sprintf("%d / %s", t.GetCpus(), humanBytes(t.GetMemoryBytes()))},
		{"Firmware / OS / bus", strings.Join([]string{enumLower(t.GetFirmware()), enumLower(t.GetOsType()), enumLower(t.GetDiskBus())}, " / ")},
		{"CD-ROMs", fmt.Sprint(t.GetCdromCount())},
		{"Mode", orDefault(enumLower(j.GetOptions().GetMode()), "default (live for KVM, cold for VMware)")},
	}
	out = append(out, warmDetails(j)...)
	for i, n := range t.GetNics() {
		out = append(out, field{fmt.Sprintf("NIC %d", i), fmt.Sprintf("%s → %s mac=%s ip=%s",
			n.GetSourceMac(), n.GetL3Network(), orDefault(n.GetMac(), "(source)"), orDefault(n.GetIp(), "(allocated)"))})
	}
	for _, w := range j.GetWarnings() {
		out = append(out, field{"Warning", w})
	}
	if j.GetState() == ferryv1.MigrationJobState_MIGRATION_JOB_STATE_SUCCEEDED {
		v := "no: some disks were copied without checksums"
		if j.GetVerified() {
			v = "yes: every disk read back from the target matched the source's checksums"
		}
		out = append(out, field{"Verified", v})
		if j.GetOptions().GetVerifyBoot() {
			b := "no"
			if j.GetBootVerified() {
				b = "yes: " + j.GetBootVerifiedBy()
			}
			out = append(out, field{"Boot verified", b})
		}
	}
	if g := j.GetGuestInspection(); g != nil {
		out = append(out, field{"Guest", fmt.Sprintf("%s (%s %s %s), %s firmware",
			orDefault(g.GetProductName(), "unknown OS"), g.GetOsType(), g.GetDistribution(), g.GetVersion(), orDefault(g.GetFirmware(), "unknown"))})
		for _, c := range g.GetChanges() {
			out = append(out, field{"Guest change", c})
		}
	}
	return append(out,
		field{"Attempt / epoch", fmt.Sprintf("%d / %d", j.GetAttempt(), j.GetEpoch())},
		field{"Created", when(j.GetCreateTime())},
		field{"Started", when(j.GetStartTime())},
		field{"Ended", when(j.GetEndTime())},
		field{"Duration", duration(j.GetDuration())},
	)
}
