package api

import (
	"context"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferry-v2v/ferry/coordinator/internal/ledger"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// usageSpans says, per span, how long it is and which tier of the
// ledger's history answers it (the finest that reaches back so far).
var usageSpans = map[ferryv1.UsageSpan]struct {
	d    time.Duration
	tier int
}{
	ferryv1.UsageSpan_USAGE_SPAN_15_MINUTES: {15 * time.Minute, 0},
	ferryv1.UsageSpan_USAGE_SPAN_1_HOUR:     {time.Hour, 0},
	ferryv1.UsageSpan_USAGE_SPAN_6_HOURS:    {6 * time.Hour, 1},
	ferryv1.UsageSpan_USAGE_SPAN_1_DAY:      {24 * time.Hour, 2},
	ferryv1.UsageSpan_USAGE_SPAN_2_WEEKS:    {14 * 24 * time.Hour, 3},
	ferryv1.UsageSpan_USAGE_SPAN_8_WEEKS:    {56 * 24 * time.Hour, 3},
	ferryv1.UsageSpan_USAGE_SPAN_1_YEAR:     {365 * 24 * time.Hour, 4},
}

func (s *serverService) GetMigrationServerUsage(ctx context.Context, req *ferryv1.GetMigrationServerUsageRequest) (*ferryv1.MigrationServerUsage, error) {
	u, err := s.usage(req)
	return reply(ctx, s.a, u, err)
}

func (s *serverService) usage(req *ferryv1.GetMigrationServerUsageRequest) (*ferryv1.MigrationServerUsage, error) {
	c := &checker{}
	server, ok := strings.CutSuffix(req.GetName(), "/usage")
	if !ok {
		c.add("name", "%q is not the usage of a migration server: want migrationServers/{id}/usage", req.GetName())
	} else {
		checkRef(c, "name", server, colServers)
	}
	checkEnum(c, "span", req.GetSpan(), false)
	if err := c.err(); err != nil {
		return nil, err
	}
	if _, ok := s.a.ledger.MigrationServer(server); !ok {
		return nil, notFound("name", server)
	}
	span := req.GetSpan()
	if span == ferryv1.UsageSpan_USAGE_SPAN_UNSPECIFIED {
		span = ferryv1.UsageSpan_USAGE_SPAN_1_HOUR
	}
	sp := usageSpans[span]
	res := ledger.UsageTiers[sp.tier].Resolution
	end := s.a.clock()
	start := end.Add(-sp.d)
	out := &ferryv1.MigrationServerUsage{Name: req.GetName(), Span: span, Resolution: durationpb.New(res),
		StartTime: timestamppb.New(start), EndTime: timestamppb.New(end)}
	// The bucket that holds start counts: it starts up to one resolution
	// before it.
	for _, p := range s.a.ledger.CacheUsage(server, sp.tier, start.Add(-res+time.Second)) {
		pt := &ferryv1.CacheUsagePoint{Time: timestamppb.New(p.Start), UsedBytes: p.Used, TotalBytes: p.Total, Samples: p.Samples}
		if p.Total > 0 {
			pt.UsedPercent = float64(p.Used) * 100 / float64(p.Total)
		}
		out.Points = append(out.Points, pt)
	}
	return out, nil
}
