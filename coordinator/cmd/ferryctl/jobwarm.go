package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferry-v2v/ferry/pkg/client"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

func (a *app) jobCutover() *cobra.Command {
	var at, reqID string
	cmd := &cobra.Command{
		Use:   "cutover NAME [--at TIME]",
		Short: "Set when a warm job cuts over (now by default)",
		Long: `Set when a warm job (created with --mode warm) cuts over: at --at (an RFC 3339
time, or a duration from now such as 2h), or at once. The cutover defines the
target VM, stops the source VM, copies and verifies the last delta (what
changed since the last precopy round) and starts the target VM. The source is
stopped by a guest shutdown, and powered off when the guest has not shut down
within the guest shutdown timeout ("settings update --guest-shutdown-timeout",
default 10m); a KVM source created with --pause-source is paused instead (no
wait for the guest, a crash-consistent image) and left paused. A cutover that
fails starts the source again. "job get" shows each round's changed bytes,
duration and estimated downtime, and after the cutover the measured downtime.`,
		Example: `  ferryctl job cutover migrationJobs/4f2c
  ferryctl job cutover 4f2c --at 2026-12-06T02:00:00Z
  ferryctl job cutover 4f2c --at 3h`,
		Args: exactlyOneArg("the job's name"),
		RunE: a.run(func(ctx context.Context, cl *client.Client, args []string) error {
			when, err := cutoverFlag("at", at)
			if err != nil {
				return err
			}
			resp, err := cl.Jobs().CutoverMigrationJob(ctx, &ferryv1.CutoverMigrationJobRequest{Name: resName("migrationJobs", args[0]),
				CutoverTime: when, RequestId: requestID(reqID)})
			if err != nil {
				return err
			}
			j := resp.GetJob()
			return a.done(resp, j.GetName()+" cuts over at "+when2(j.GetOptions().GetCutoverTime()))
		}),
	}
	cmd.Flags().StringVar(&at, "at", "", "when: an RFC 3339 time or a duration from now (default: now)")
	addRequestIDFlag(cmd, &reqID)
	return cmd
}

// cutoverFlag reads a time flag: empty (nil), a duration from now, or an
// RFC 3339 time.
func cutoverFlag(name, v string) (*timestamppb.Timestamp, error) {
	if v == "" {
		return nil, nil
	}
	if d, err := time.ParseDuration(v); err == nil && d >= 0 {
		return timestamppb.New(time.Now().Add(d)), nil
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return nil, usageError{fmt.Errorf("--%s %q: give a duration from now (2h) or an RFC 3339 time (2026-01-02T15:04:05Z)", name, v)}
	}
	return timestamppb.New(t), nil
}

func when2(t *timestamppb.Timestamp) string {
	if t == nil {
		return "(not set)"
	}
	return t.AsTime().UTC().Format(time.RFC3339)
}

// warmDetails are the fields of a warm job in "job get".
func warmDetails(j *ferryv1.MigrationJob) []field {
	o := j.GetOptions()
	if o.GetMode() != ferryv1.MigrationMode_MIGRATION_MODE_WARM {
		return nil
	}
	out := []field{
		{"Precopy interval", humanDuration(o.GetPrecopyInterval().AsDuration())},
		{"Cutover", orDefault(whenOrEmpty(o.GetCutoverTime()), "waits for ferryctl job cutover")},
	}
	if d := j.GetMeasuredDowntime(); d != nil {
		out = append(out, field{"Measured downtime", shortDuration(d.AsDuration())})
	}
	return out
}

func whenOrEmpty(t *timestamppb.Timestamp) string {
	if t == nil {
		return ""
	}
	return when2(t)
}

// roundTable prints a warm job's precopy rounds.
func roundTable(w io.Writer, rs []*ferryv1.PrecopyRound) error {
	t := newTable(w, "ROUND", "ENDED", "CHANGED", "READ", "UPLOADED", "TOOK", "EST. DOWNTIME")
	for _, r := range rs {
		n := fmt.Sprint(r.GetNumber())
		if r.GetFinal() {
			n += " (cutover)"
		}
		t.row(n, when2(r.GetEndTime()), humanBytes(r.GetChangedBytes()), humanBytes(r.GetReadBytes()),
			humanBytes(r.GetUploadedBytes()), shortDuration(r.GetDuration().AsDuration()), estimate(r.GetEstimatedDowntime()))
	}
	return t.flush()
}

func estimate(d *durationpb.Duration) string {
	if d == nil {
		return ""
	}
	return shortDuration(d.AsDuration())
}
