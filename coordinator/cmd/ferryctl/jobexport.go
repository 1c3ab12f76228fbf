package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/ferry-v2v/ferry/pkg/client"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
	"github.com/ferry-v2v/ferry/pkg/plan"
)

func (a *app) jobExport() *cobra.Command {
	var server, source string
	state := newEnumFlag(ferryv1.MigrationJobState(0).Descriptor(), nil)
	cmd := &cobra.Command{
		Use:   "export [NAME...] [--source SRC] [--migration-server SERVER] [--state STATE]",
		Short: "Write jobs as a plan file that 'job create -f' takes",
		Long: `Write the jobs named, or those the filters select, as a plan file: per job
its source VM, target (with the NIC addresses and MACs it was given),
options, display name and description. 'ferryctl job create -f' takes the
file unchanged, here or on another Ferry whose inventory has the same names,
so a wave can be reviewed, kept under version control and created elsewhere.
A plan has one source and one migration server: select jobs of one pair.
YAML by default; -o json writes JSON.`,
		Example: `  ferryctl job export --source vc --migration-server vmw-1 --state failed > retry.yaml
  ferryctl job create -f retry.yaml`,
	}
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) > 0 && (cmd.Flags().Changed("source") || cmd.Flags().Changed("migration-server") || cmd.Flags().Changed("state")) {
			return usagef("give job names or filters, not both")
		}
		return a.run(func(ctx context.Context, cl *client.Client, args []string) error {
			var jobs []*ferryv1.MigrationJob
			if len(args) > 0 {
				for _, n := range args {
					j, err := cl.Jobs().GetMigrationJob(ctx, &ferryv1.GetMigrationJobRequest{Name: resName("migrationJobs", n)})
					if err != nil {
						return err
					}
					jobs = append(jobs, j)
				}
			} else {
				lf := listFlags{}
				err := paginate(ctx, &lf, func(ctx context.Context, token string) (string, error) {
					r, err := cl.Jobs().ListMigrationJobs(ctx, &ferryv1.ListMigrationJobsRequest{
						PageToken: token, State: ferryv1.MigrationJobState(state.value),
						MigrationServer: resName("migrationServers", server), Source: resName("sources", source),
					})
					jobs = append(jobs, r.GetJobs()...)
					return r.GetNextPageToken(), err
				})
				if err != nil {
					return err
				}
			}
			req, err := plan.FromJobs(jobs)
			if err != nil {
				return err
			}
			b, err := plan.Marshal(req, a.output == "json")
			if err != nil {
				return err
			}
			_, err = a.io.Out.Write(b)
			return err
		})(cmd, args)
	}
	addEnumFlag(cmd.Flags(), state, "state", "only jobs in this state")
	cmd.Flags().StringVar(&server, "migration-server", "", "only jobs of this migration server")
	cmd.Flags().StringVar(&source, "source", "", "only jobs of this source")
	return cmd
}
