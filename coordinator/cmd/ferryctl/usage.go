package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ferry-v2v/ferry/pkg/client"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// usageSpanNames are the spans of 'server usage --span'.
var usageSpanNames = []struct {
	name string
	span ferryv1.UsageSpan
}{
	{"15m", ferryv1.UsageSpan_USAGE_SPAN_15_MINUTES}, {"1h", ferryv1.UsageSpan_USAGE_SPAN_1_HOUR},
	{"6h", ferryv1.UsageSpan_USAGE_SPAN_6_HOURS}, {"1d", ferryv1.UsageSpan_USAGE_SPAN_1_DAY},
	{"2w", ferryv1.UsageSpan_USAGE_SPAN_2_WEEKS}, {"8w", ferryv1.UsageSpan_USAGE_SPAN_8_WEEKS},
	{"1y", ferryv1.UsageSpan_USAGE_SPAN_1_YEAR},
}

func (a *app) serverUsage() *cobra.Command {
	var span string
	cmd := &cobra.Command{
		Use:   "usage NAME [--span 15m|1h|6h|1d|2w|8w|1y]",
		Short: "Chart how full a migration server's cache disk was",
		Long: `Chart the used percentage of a migration server's cache disk over a span, from
the history the coordinators keep (it survives leader changes and restarts).
Each point is the mean of the samples of its bucket: 15 s for 15m and 1h,
1 min for 6h, 5 min for 1d, 1 h for 2w and 8w, 6 h for 1y. A gap is a time
the server's agent was not connected. -o json prints the points.`,
		Example: `  ferryctl server usage kvm-1 --span 6h
  ferryctl server usage kvm-1 --span 1d -o json`,
		Args: exactlyOneArg("the server's name"),
	}
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		var s ferryv1.UsageSpan
		names := make([]string, 0, len(usageSpanNames))
		for _, n := range usageSpanNames {
			names = append(names, n.name)
			if n.name == span {
				s = n.span
			}
		}
		if s == ferryv1.UsageSpan_USAGE_SPAN_UNSPECIFIED {
			return usagef("--span %q: want one of %s", span, strings.Join(names, ", "))
		}
		return a.run(func(ctx context.Context, cl *client.Client, args []string) error {
			u, err := cl.MigrationServers().GetMigrationServerUsage(ctx, &ferryv1.GetMigrationServerUsageRequest{
				Name: resName("migrationServers", args[0]) + "/usage", Span: s})
			if err != nil {
				return err
			}
			if a.output != "table" {
				return printMessage(a.io.Out, a.output, u)
			}
			return usageChart(a.io.Out, u, span, 60, 8)
		})(cmd, args)
	}
	cmd.Flags().StringVar(&span, "span", "1h", "how far back: 15m, 1h, 6h, 1d, 2w, 8w or 1y")
	return cmd
}

// usageChart draws the used percentage as columns of block characters,
// width columns over the span (each the mean of the points in it, blank
// where there are none) and height rows for 0-100 %.
func usageChart(w io.Writer, u *ferryv1.MigrationServerUsage, span string, width, height int) error {
	pts := u.GetPoints()
	server := strings.TrimSuffix(u.GetName(), "/usage")
	if len(pts) == 0 {
		_, err := fmt.Fprintf(w, "%s: no cache usage recorded in the last %s (its agent has not reported)\n", server, span)
		return err
	}
	last := pts[len(pts)-1]
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, p := range pts {
		lo, hi = math.Min(lo, p.GetUsedPercent()), math.Max(hi, p.GetUsedPercent())
	}
	fmt.Fprintf(w, "%s cache used over the last %s (%s per point): now %.1f%% (%s of %s), min %.1f%%, max %.1f%%\n",
		server, span, u.GetResolution().AsDuration(), last.GetUsedPercent(), humanBytes(last.GetUsedBytes()), humanBytes(last.GetTotalBytes()), lo, hi)
	start, end := u.GetStartTime().AsTime(), u.GetEndTime().AsTime()
	cols := make([]float64, width)
	n := make([]int, width)
	for _, p := range pts {
		i := int(float64(width) * float64(p.GetTime().AsTime().Sub(start)) / float64(end.Sub(start)))
		i = max(0, min(width-1, i))
		cols[i] += p.GetUsedPercent()
		n[i]++
	}
	blocks := []rune(" ▁▂▃▄▅▆▇█")
	for row := height - 1; row >= 0; row-- {
		label := "     "
		switch row {
		case height - 1:
			label = " 100%"
		case 0:
			label = "   0%"
		}
		var b strings.Builder
		for i := range cols {
			if n[i] == 0 {
				b.WriteRune(' ')
				continue
			}
			// How much of this row the column fills, in eighths.
			fill := (cols[i]/float64(n[i]))/100*float64(height) - float64(row)
			eighths := int(math.Round(max(0, min(1, fill)) * 8))
			if row == 0 && eighths == 0 {
				eighths = 1 // a point, even at 0 %, is not a gap
			}
			b.WriteRune(blocks[eighths])
		}
		fmt.Fprintf(w, "%s │%s\n", label, b.String())
	}
	left, right := start.Local().Format("Jan 02 15:04"), end.Local().Format("Jan 02 15:04")
	pad := max(1, width-len(left)-len(right))
	_, err := fmt.Fprintf(w, "      └%s\n       %s%s%s\n", strings.Repeat("─", width), left, strings.Repeat(" ", pad), right)
	return err
}
