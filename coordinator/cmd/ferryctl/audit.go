package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferry-v2v/ferry/pkg/client"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

func (a *app) auditCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "The audit trail: who changed what, when, and how it ended",
		Long: `Every call that changes something (create, delete, update, enable,
disable, set, cancel, restart, revoke, release, sync, membership changes)
leaves one audit event: the caller's certificate identity, the method, the
resource, the names of the fields it set (never their values: no secret is
kept), the time and the result code. A migration job's state changes are
events too, by identity "system". The coordinators keep 90 days and at most
100000 events by default (ferry-coordinator --audit-retention,
--audit-max-events).`,
	}
	cmd.AddCommand(a.auditList())
	return cmd
}

func (a *app) auditList() *cobra.Command {
	var lf listFlags
	var resource, identity, since, until string
	cmd := &cobra.Command{
		Use:   "list [--resource NAME] [--identity ferry://ROLE/NAME] [--since 1h] [--until TIME]",
		Short: "List audit events, newest first",
		Long: `List audit events, newest first. --resource keeps the events about one
resource (migrationServers/kvm-1, migrationJobs/ID...), its creation
included; --identity those of one caller; --since and --until bound the
time, each a duration before now (90m, 24h) or an RFC 3339 time.`,
		Example: `  ferryctl audit list --resource migrationServers/kvm-1
  ferryctl audit list --identity ferry://operator/alice --since 24h -o json`,
		Args: noArgs,
		RunE: a.run(func(ctx context.Context, cl *client.Client, _ []string) error {
			req := &ferryv1.ListAuditEventsRequest{Resource: resource, Identity: identity}
			var err error
			if req.StartTime, err = timeFlag("since", since); err != nil {
				return err
			}
			if req.EndTime, err = timeFlag("until", until); err != nil {
				return err
			}
			all := &ferryv1.ListAuditEventsResponse{}
			err = paginate(ctx, &lf, func(ctx context.Context, token string) (string, error) {
				req.PageSize, req.PageToken = lf.pageSize, token
				r, err := cl.Audit().ListAuditEvents(ctx, req)
				all.AuditEvents, all.NextPageToken = append(all.AuditEvents, r.GetAuditEvents()...), r.GetNextPageToken()
				return r.GetNextPageToken(), err
			})
			if err != nil {
				return err
			}
			var rows [][]string
			for _, ev := range all.GetAuditEvents() {
				rows = append(rows, []string{when(ev.GetTime()), ev.GetIdentity(), auditWhat(ev), ev.GetResource(), ev.GetResult(), strings.Join(ev.GetFields(), ",")})
			}
			return a.showList(all, []string{"TIME", "IDENTITY", "METHOD", "RESOURCE", "RESULT", "FIELDS"}, rows, all.GetNextPageToken())
		}),
	}
	f := cmd.Flags()
	f.StringVar(&resource, "resource", "", "only events about this resource (such as migrationServers/kvm-1)")
	f.StringVar(&identity, "identity", "", "only events of this caller (ferry://ROLE/NAME)")
	f.StringVar(&since, "since", "", "only events at or after this time: a duration before now (24h) or RFC 3339")
	f.StringVar(&until, "until", "", "only events before this time: a duration before now or RFC 3339")
	addListFlags(cmd, &lf)
	return cmd
}

// auditWhat is an event's method without its package, or the state change
// of a job.
func auditWhat(ev *ferryv1.AuditEvent) string {
	if ev.GetState() != ferryv1.MigrationJobState_MIGRATION_JOB_STATE_UNSPECIFIED {
		return fmt.Sprintf("%s %s→%s", ev.GetMethod(), enumShort(ev.GetPreviousState()), enumShort(ev.GetState()))
	}
	return strings.TrimPrefix(ev.GetMethod(), "/ferry.v1.")
}

// timeFlag reads --since or --until: empty, a duration before now, or an
// RFC 3339 time.
func timeFlag(name, v string) (*timestamppb.Timestamp, error) {
	if v == "" {
		return nil, nil
	}
	if d, err := time.ParseDuration(v); err == nil && d >= 0 {
		return timestamppb.New(time.Now().Add(-d)), nil
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return nil, usageError{fmt.Errorf("--%s %q: give a duration before now (24h) or an RFC 3339 time (2026-01-02T15:04:05Z)", name, v)}
	}
	return timestamppb.New(t), nil
}
