package ledger

import (
	"time"

	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// The cache-usage history of each migration server lives in the ledger,
// so every replica has it and it survives leader changes and restarts. A
// sample is taken as the server is created and as each PutHost of its host
// applies: the command's time and the cache bytes of the host's facts (the
// leader refreshes the connected hosts' facts every checkpoint interval,
// 30 s by default, and an agent gathers them as often). Each
// tier keeps the mean of the samples of each bucket of its resolution
// for its span (as sums and a count, so the mean is exact), so the
// history is bounded: 240 + 360 + 288 + 1344 + 1464 = 3,696 buckets per
// server, at most 5 + 9 + 9 + 2 = 25 bytes each packed: at most 90 KiB
// per server for a year, whatever the number of samples.

// UsageTier is one resolution of the history and how far back it reaches.
type UsageTier struct {
	Resolution, Span time.Duration
}

// UsageTiers are the history's tiers, finest first.
var UsageTiers = []UsageTier{
	{15 * time.Second, time.Hour},
	{time.Minute, 6 * time.Hour},
	{5 * time.Minute, 24 * time.Hour},
	{time.Hour, 8 * 7 * 24 * time.Hour},
	{6 * time.Hour, 366 * 24 * time.Hour},
}

// UsagePoint is one bucket of a tier.
type UsagePoint struct {
	Start       time.Time
	Used, Total int64
	Samples     int32
}

// CacheUsage returns the buckets of a server's history in tier that start
// at or after from, oldest first.
func (l *Ledger) CacheUsage(server string, tier int, from time.Time) []UsagePoint {
	l.mu.RLock()
	defer l.mu.RUnlock()
	h := l.usage[server]
	if h == nil || tier >= len(h.GetTiers()) {
		return nil
	}
	t := h.GetTiers()[tier]
	var out []UsagePoint
	for i, s := range t.GetStart() {
		if s < from.Unix() {
			continue
		}
		n := int64(t.GetSamples()[i])
		out = append(out, UsagePoint{Start: time.Unix(s, 0).UTC(), Used: t.GetUsedBytesSum()[i] / n, Total: t.GetTotalBytesSum()[i] / n, Samples: t.GetSamples()[i]})
	}
	return out
}

// sampleUsage records the cache usage of the migration server on host h,
// if it has one and the facts know the cache's size; l.mu is held.
func (l *Ledger) sampleUsage(h *ferryv1.Host, now time.Time) {
	total, free := h.GetFacts().GetCacheTotalBytes(), h.GetFacts().GetCacheFreeBytes()
	if total <= 0 || free < 0 || free > total {
		return
	}
	for name, ms := range l.servers {
		if ms.GetHost() != h.GetName() {
			continue
		}
		hist := l.usage[name]
		if hist == nil {
			hist = &ledgerv1.CacheUsageHistory{Name: name}
			for _, t := range UsageTiers {
				hist.Tiers = append(hist.Tiers, &ledgerv1.UsageTier{ResolutionSeconds: int64(t.Resolution / time.Second)})
			}
			l.usage[name] = hist
		}
		for i, t := range hist.GetTiers() {
			addSample(t, UsageTiers[i].Span, now.Unix(), total-free, total)
		}
		return // a host is one migration server at most
	}
}

// addSample adds a sample at unix second at to a tier and drops the
// buckets that fell out of its span. A sample older than the newest
// bucket (a new leader's clock behind the old one's) is dropped: buckets
// stay in order.
func addSample(t *ledgerv1.UsageTier, span time.Duration, at, used, total int64) {
	res := t.GetResolutionSeconds()
	start := at - at%res
	n := len(t.Start)
	switch {
	case n > 0 && t.Start[n-1] == start:
		t.UsedBytesSum[n-1] += used
		t.TotalBytesSum[n-1] += total
		t.Samples[n-1]++
	case n > 0 && t.Start[n-1] > start:
		return
	default:
		t.Start = append(t.Start, start)
		t.UsedBytesSum = append(t.UsedBytesSum, used)
		t.TotalBytesSum = append(t.TotalBytesSum, total)
		t.Samples = append(t.Samples, 1)
	}
	oldest := start - int64(span/time.Second) + res
	drop := 0
	for drop < len(t.Start) && t.Start[drop] < oldest {
		drop++
	}
	if drop > 0 {
		t.Start = append(t.Start[:0], t.Start[drop:]...)
		t.UsedBytesSum = append(t.UsedBytesSum[:0], t.UsedBytesSum[drop:]...)
		t.TotalBytesSum = append(t.TotalBytesSum[:0], t.TotalBytesSum[drop:]...)
		t.Samples = append(t.Samples[:0], t.Samples[drop:]...)
	}
}
