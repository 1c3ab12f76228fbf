package main

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// TestUsageChart: a column per slice of the span, as high as its mean
// used percentage (25 % per row here), blank where the agent sent
// nothing, and a sliver where it sent 0 %.
func TestUsageChart(t *testing.T) {
	end := time.Date(2030, 1, 2, 3, 0, 0, 0, time.UTC)
	start := end.Add(-10 * time.Minute)
	u := &ferryv1.MigrationServerUsage{Name: "migrationServers/kvm-1/usage", Resolution: durationpb.New(time.Minute),
		StartTime: timestamppb.New(start), EndTime: timestamppb.New(end)}
	for i, pct := range []float64{0, 25, 50, 75, 100} {
		if i == 2 {
			continue // a gap
		}
		u.Points = append(u.Points, &ferryv1.CacheUsagePoint{Time: timestamppb.New(start.Add(time.Duration(2*i) * time.Minute)),
			UsedPercent: pct, UsedBytes: int64(pct) << 30, TotalBytes: 100 << 30})
	}
	var b strings.Builder
	if err := usageChart(&b, u, "10m", 5, 4); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(b.String(), "\n")
	want := []string{
		"migrationServers/kvm-1 cache used over the last 10m (1m0s per point): now 100.0% (100 GiB of 100 GiB), min 0.0%, max 100.0%",
		" 100% │    █",
		"      │   ██",
		"      │   ██",
		"   0% │▁█ ██",
	}
	for i, w := range want {
		if lines[i] != w {
			t.Errorf("line %d = %q, want %q\n%s", i, lines[i], w, b.String())
		}
	}
	b.Reset()
	u.Points = nil
	if err := usageChart(&b, u, "1h", 5, 4); err != nil || !strings.Contains(b.String(), "no cache usage recorded in the last 1h") {
		t.Errorf("empty history: %q, %v", b.String(), err)
	}
}
